"""What a configuration needs before it is built: the memory its training holds (parameters, optimizer
state, gradients, one step's activations, the corpus and the batch plans) and the size of its compiled
program, each checked against this machine. What cannot fit, or cannot compile in reasonable time, is
refused with its figure and the limit, instead of hanging in an allocation, failing after a minute with
XLA's RESOURCE_EXHAUSTED, or compiling for an hour.

The figures are estimates from the shapes alone (no array is made): the state's exact size from
`jax.eval_shape`, the rest from the model's widths. They count what training must hold at once, so a
refused configuration cannot fit; one that passes may still need somewhat more (XLA's temporaries).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import jax

from jaxrnn import cells
from jaxrnn.config import Config, flag
from jaxrnn.errors import ConfigError

PLAN_BYTES = 5  # a batch plan's entry: an int32 window start and a bool mask
# Values the backward pass keeps per hidden unit, row and time step, by cell, as XLA's own memory analysis
# of the compiled training chunk measured them on a CPU (`python tools/budget_report.py memory`; figures in
# docs/benchmarks.md); d2l's GRU counts as the GRU, and a cell not measured as the LSTM does per gate.
SAVED_PER_UNIT = {"rnn": 4, "gru": 10, "gru-d2l": 10, "lstm": 21}
# The training program's size in XLA operations (lines of its lowered HLO), as measured on jaxrnn's programs
# (a chunk of epochs, one evaluation): about BASE_OPS, plus per layer LAYER_OPS and STEP_OPS for each time
# step the loop unrolls (`python tools/budget_report.py compile 1 16 64 115`; docs/benchmarks.md).
BASE_OPS, LAYER_OPS, STEP_OPS = 500, 160, 22
# XLA's compile time grows faster than the program (docs/benchmarks.md): past this many operations a 2-core
# CPU compiles for minutes, and a user is better told so at once
MAX_OPS = 100_000


@dataclass(frozen=True)
class Needs:
    """Bytes a run holds at once, by part, on the memory its devices share (one GPU's, or the host's for
    every CPU device): `state` (params and optimizer state), `grads` (the gradient and the update), one
    step's `activations` (what the backward pass reads) and the evaluation's, the `corpus` tokens and the
    `plans` of one chunk or round."""

    state: int
    grads: int
    activations: int
    corpus: int
    plans: int

    @property
    def total(self) -> int:
        return self.state + self.grads + self.activations + self.corpus + self.plans


def tree_bytes(tree: object) -> int:
    """The bytes of every array (or ShapeDtypeStruct) of a pytree."""
    return sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))


def needs(cfg: Config, vocab_size: int, state_bytes: int, param_bytes: int, devices: int, local: int, shared: bool,
          train_windows: int, val_windows: int, corpus_tokens: int, token_bytes: int, steps_per_epoch: int) -> Needs:
    """What training `cfg` holds at once on `devices` devices in all, `local` of them this process' (`shared`:
    one memory for this process' devices, as CPU devices share the host's; else what one device holds)."""
    B, T, H, V, L = cfg.batch_size, cfg.num_steps, cfg.hidden, vocab_size, cfg.layers
    b = -(-B // devices)  # each device's rows
    saved = SAVED_PER_UNIT.get(cfg.cell, 5 * cells.CELLS[cfg.cell].gates + 1)
    c = 2 if cfg.dtype == "bfloat16" else 4
    onehot = V if (cfg.impl == "flax" and not cfg.embed) else cfg.embed
    per_layer = T * b * H * saved * c  # the input projection, the gates and the states of every step
    head = T * b * V * 4 * 2  # logits and their gradient, in float32 for the loss
    train = L * per_layer + head + T * b * onehot * c
    evaluate = T * b * (H * L * c + V * 4 * 2)
    rows = (min(cfg.save_every, cfg.epochs) * steps_per_epoch if cfg.steps is None else cfg.eval_every) * B
    plans = (rows + max(-(-val_windows // B), 1) * B) * PLAN_BYTES * 2  # on the host, then on the devices
    copies = local if shared else 1
    replicated = (state_bytes, 2 * param_bytes, max(train, evaluate), corpus_tokens * token_bytes)
    state, grads, activations, corpus = (x * copies for x in replicated)
    return Needs(state, grads, activations, corpus, -(-plans * copies // devices))


def available(device: jax.Device) -> int | None:
    """The memory one device can use (an accelerator's own), or the host's available memory for a CPU;
    None where neither is known."""
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        with open("/proc/meminfo") as f:  # MemAvailable: what can be had without swapping
            info = dict(line.split(":", 1) for line in f)
        host = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        try:
            host = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    return min(host, _cgroup_room())


CGROUPS = (  # (limit, usage, memory.stat's reclaimable page cache): cgroup v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "file"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes",
     "/sys/fs/cgroup/memory/memory.stat", "total_cache"),
)


def _cgroup_room() -> int | float:
    """What this process' cgroup (a container's memory limit) still allows, its page cache counted as free
    (the kernel reclaims it); inf without a limit."""
    for limit, usage, stat, cache in CGROUPS:
        try:
            with open(limit) as f, open(usage) as g, open(stat) as h:
                cached = dict(line.split() for line in h if line.count(" ") == 1).get(cache, "0")
                return max(int(f.read()) - int(g.read()) + int(cached), 0)
        except (OSError, ValueError):  # absent, or 'max': no limit
            continue
    return math.inf


def gigabytes(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def check_memory(cfg: Config, need: Needs, limit: int | None, where: str) -> None:
    """Refuse a run whose estimate exceeds `limit` bytes, naming the figures and the settings that make it."""
    if limit is None or need.total <= limit:
        return
    parts = {"parameters and optimizer state": need.state, "gradients": need.grads,
             "activations of one step": need.activations, "the corpus": need.corpus, "batch plans": need.plans}
    biggest = max(parts, key=parts.get)
    advice = {"parameters and optimizer state": "lower --hidden, --layers or --embed",
              "gradients": "lower --hidden, --layers or --embed",
              "activations of one step": f"lower --batch-size (now {cfg.batch_size}), --window (now {cfg.num_steps}),"
                                         " --hidden or --layers",
              "the corpus": "use a shorter text", "batch plans": "lower --save-every, or train by --steps with a "
              "smaller --eval-every"}[biggest]
    shown = ", ".join(f"{k} {gigabytes(v)}" for k, v in parts.items() if v >= 0.01 * need.total)
    raise ConfigError(f"this configuration needs about {gigabytes(need.total)} of memory ({shown}), but {where} "
                      f"has {gigabytes(limit)}; {advice}")


def program_ops(layers: int, unroll: int) -> int:
    """The estimated size of the training program in XLA operations."""
    return BASE_OPS + layers * (LAYER_OPS + STEP_OPS * unroll)


def check_program(cfg: Config, unroll: int) -> None:
    """Refuse a model whose training program is too large to compile in reasonable time (mostly depth:
    every layer is its own loop in the program, unrolled `unroll` time steps)."""
    ops = program_ops(cfg.layers, unroll)
    if ops <= MAX_OPS:
        return
    most = (MAX_OPS - BASE_OPS) // (LAYER_OPS + STEP_OPS * unroll)
    fewer = f"pass --layers {most} or fewer" if most >= 1 else "pass a smaller --unroll"
    if unroll > 1 and program_ops(cfg.layers, 1) <= MAX_OPS:
        fewer += ", or --unroll 1"
    raise ConfigError(f"{flag('layers')} {cfg.layers} makes a training program of about {ops:,} operations (each "
                      f"layer a loop unrolled {unroll} time steps), past the {MAX_OPS:,} that XLA compiles in a few "
                      f"minutes (it would take far longer); {fewer}")
