"""How a config's layers run, decided in one place: `resolve` turns (config, backend) into the `cells.Loop`
a model runs, or a `ConfigError` that says why it cannot.

It settles, once, what used to be settled wherever it was needed: the cell's options (its entry's
defaults, then the config's), whether the implementation can build the cell, the scan's unroll and
whether the cell's whole-sequence form runs (`Cell.best`, measured per backend), whether the Pallas
kernels run (`--kernel pallas`, or `auto` where they measured faster) and which ones (whole-loop
kernels where W_hh fits on chip, else a kernel per step), and whether greedy decoding runs as one
kernel. Models, sampling and the benchmark read the result; nothing else chooses.
"""

from __future__ import annotations

import jax

from jaxrnn import cells, kernels, step_kernels
from jaxrnn.cells import Cell, Loop, Options
from jaxrnn.config import Config
from jaxrnn.errors import ConfigError


def resolve(cfg: Config, backend: str | None = None) -> Loop:
    """The loop `cfg`'s layers run on `backend` (default: JAX's), checked before any data is read."""
    backend = backend or jax.default_backend()
    spec = cells.CELLS[cfg.cell]
    if cfg.impl == "flax" and spec.flax is None:
        raise ConfigError(f"--cell {cfg.cell} has no Flax twin; pass --impl scratch")
    options = cell_options(cfg, spec)
    if cfg.kernel == "pallas":
        _check_kernels(cfg, spec, backend)
    sequence, unroll = spec.best(cfg.hidden, backend)
    unroll = min(cfg.unroll or unroll, cfg.num_steps)
    if cfg.impl == "flax":  # nn.scan over the cell's Flax twin
        return Loop(cfg.cell, unroll, cfg.dtype)
    if cfg.kernel == "pallas" or (cfg.kernel == "auto" and _pallas_pays(cfg, spec, backend)):
        wide = not kernels.on_chip(cfg.hidden, spec.gates, cfg.dtype)
        run = "step-kernels" if wide and spec.step_kernels and step_kernels.takes(cfg.hidden) else "kernels"
    else:
        run = "sequence" if sequence and spec.sequence else "scan"
    # greedy decoding by one kernel where the loop runs on kernels, off CPUs (a CPU only interprets a
    # kernel, slowly); the decoding kernel holds every weight, so W_hh must fit on chip
    decode = ("kernel" if run != "scan" and run != "sequence" and spec.update and backend != "cpu"
              and kernels.on_chip(cfg.hidden, spec.gates, cfg.dtype) else "scan")
    return Loop(cfg.cell, unroll, cfg.dtype, run, decode, options)


def cell_options(cfg: Config, spec: Cell) -> Options:
    """The cell's options: its entry's defaults, then the config's `cell_options`, each checked."""
    given = cfg.cell_options or {}
    if given and cfg.impl == "flax":
        raise ConfigError("--cell-options are the scratch cells' own; pass --impl scratch or drop --cell-options")
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        has = f"its options are {', '.join(spec.options)}" if spec.options else "it has none: drop --cell-options"
        raise ConfigError(f"--cell {cfg.cell} has no option {unknown[0]!r}; {has}")
    for name, v in given.items():
        if isinstance(spec.options[name], int) and not isinstance(v, int):
            raise ConfigError(f"--cell-options {name}={v} must be a whole number; pass e.g. "
                              f"{name}={spec.options[name]}")
    chosen = {**spec.options, **given}
    problem = spec.check(cfg.hidden, **chosen)
    if problem:
        raise ConfigError(f"--cell-options for --cell {cfg.cell}: {problem}")
    return tuple(sorted(chosen.items()))


def _pallas_pays(cfg: Config, spec: Cell, backend: str) -> bool:
    """`--kernel auto`'s choice: the whole-loop Pallas kernels on GPUs wherever they compile (they measured
    faster than the scan path at every width that fits, in training and decoding: docs/benchmarks.md); the
    scan path elsewhere (a CPU only interprets them; TPUs and the per-step kernels of wider layers are not
    measured)."""
    return (backend == "gpu" and cfg.impl == "scratch" and spec.kernels is not None
            and spec.matmul_gates is None  # d2l's GRU form: its kernels have not yet run on a GPU
            and kernels.on_chip(cfg.hidden, spec.gates, cfg.dtype) and _shape_problem(cfg, spec) is None)


def _shape_problem(cfg: Config, spec: Cell) -> str | None:
    """Why Triton cannot compile the config's kernels (`kernels.shape_problem`), or None."""
    return kernels.shape_problem(cfg.hidden, cfg.embed, spec.gates, cfg.dtype, per_step=spec.step_kernels is not None)


def _check_kernels(cfg: Config, spec: Cell, backend: str) -> None:
    """Refuse `--kernel pallas` where the cell has no kernels, or Triton cannot compile them on a GPU."""
    if cfg.impl == "flax" or spec.kernels is None:
        have = [name for name, cell in cells.CELLS.items() if cell.kernels]
        raise ConfigError(f"--kernel pallas runs the scratch cells that have Pallas kernels ({', '.join(have)}), "
                          f"not --cell {cfg.cell} --impl {cfg.impl}; pass --kernel scan, or one of those with --impl "
                          "scratch")
    problem = _shape_problem(cfg, spec)
    if problem and backend == "gpu":
        raise ConfigError(f"--kernel pallas on a GPU compiles with Triton: {problem}; pass --kernel scan")
