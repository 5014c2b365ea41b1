"""Time one layer's training step (the recurrence forward and backward) on the scan path and on the Pallas
kernels, over cells, shapes, dtypes and the kernels' batch block, and check the kernels against the scan path
on the same device; then greedy decoding by the kernel against the scan loop. One process, one table.

Layers whose W_hh does not fit on chip run step_kernels.py's kernel per step (impl `pallas r<rows>
c<columns>/<backward columns> k<chunk> w<warps> s<stages>`).

Each row: cell, T, B, H, dtype, precision, impl (scan, or pallas with its batch block and warps), compile_s,
step_ms (median of 5 rounds of 20 chained calls), tokens_per_s (T*B per step), err (max relative error of
the states and of the gradients against the scan path; null for the scan rows), or error (why it failed).
A case that fails (a shape Triton refuses, say) is recorded and the sweep goes on.

usage: python tools/kernel_sweep.py [--quick] [--json-out FILE] [--budget SECONDS]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxrnn import cells, kernels, step_kernels
from jaxrnn.cells import Loop
from jaxrnn.config import Config
from jaxrnn.execution import resolve
from jaxrnn.models import ModelConfig, ScratchRNNLM
from jaxrnn.sample import generate

SEED = (32, 1024, 32)  # T, B, H of the seed config
# a case's overrides of the kernels' constants: the whole-loop kernels' batch block, the per-step kernels'
# rows, columns (forward / backward), inner chunk and pipelining stages, and both's warps
TUNABLE = {"block": (kernels, "BLOCK"), "warps": (kernels, "WARPS"), "rows": (step_kernels, "ROWS"),
           "cols": (step_kernels, "COLS"), "back_cols": (step_kernels, "BACK_COLS"), "chunk": (step_kernels, "CHUNK"),
           "stages": (step_kernels, "STAGES")}
FORMS = [name for name, cell in cells.CELLS.items() if cell.kernels]  # rnn, lstm, gru, gru-d2l


def cases(quick: bool) -> list[dict[str, Any]]:
    """The grid, most telling first (a budget cuts the tail): every cell at the seed shape (float32 at both
    precisions, bfloat16), wider layers over 256 steps at cuDNN's precision (TF32) and in bfloat16 (from
    256 on the per-step kernels, the issue's 1024 among them), the batch block and warps at the seed shape
    (tanh), then the per-step kernels' rows, columns, inner chunk, warps and stages at 1024 (LSTM)."""
    kinds = [("float32", "highest"), ("float32", "default"), ("bfloat16", "default")]
    grid = [(SEED, kinds, {}, FORMS)]
    if not quick:
        grid += [((256, 128, h), kinds[1:], {}, FORMS) for h in (64, 128)]
        grid += [((256, 128, h), kinds[1:], {}, [f for f in FORMS if f != "gru-d2l"]) for h in (1024, 256)]
        grid += [(SEED, kinds[:1], dict(block=b, warps=w), ["rnn"]) for b, w in [(32, 4), (64, 4), (16, 2), (16, 8)]]
        grid += [((256, 128, 1024), kinds[1:2], {name: value}, ["lstm"]) for name, value in (
            ("rows", 32), ("rows", 128), ("cols", 32), ("back_cols", 16), ("back_cols", 64), ("chunk", 32),
            ("chunk", 128), ("warps", 8), ("stages", 2), ("stages", 3))]
    return [dict(cell=cell, shape=shape, dtype=dtype, precision=precision, **tune)
            for shape, todo, tune, forms in grid for dtype, precision in (todo[:1] if quick else todo)
            for cell in forms]


def layer_problem(form: str, T: int, B: int, H: int, dtype: str):
    key, cell = jax.random.PRNGKey(0), form
    p = cells.cell_init(key, 4, H, 1.0 / np.sqrt(H), cell)
    p = {k: v + 0.1 * jax.random.normal(jax.random.fold_in(key, i), v.shape) for i, (k, v) in enumerate(p.items())}
    own = {k: v.astype(dtype) for k, v in p.items() if k not in ("W_xh", "b_h")}
    s0 = cells.zero_state(cell, B, H, dtype)
    xw = jax.random.normal(jax.random.fold_in(key, 7), (T, B, cells.CELLS[cell].gates * H)).astype(dtype)
    w = jax.random.normal(jax.random.fold_in(key, 8), (T, B, H)).astype(jnp.float32)
    return own, s0, xw, w


def step_fn(loop: Loop, w):
    """value and gradients of sum(h * w) over every state, w.r.t. the recurrent params, start state and xw."""
    def loss(own, s0, xw):
        spec = loop.spec
        _, hs = (jax.lax.scan(lambda s, x: spec.step(own, s, x), s0, xw, unroll=loop.unroll) if loop.run == "scan"
                 else spec.form(loop.run)(own, s0, xw, loop.unroll))
        return (hs.astype(jnp.float32) * w).sum(), hs
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def timed(fn, args, rounds: int = 5, calls: int = 20) -> tuple[float, float, Any]:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            r = fn(*args)
        jax.block_until_ready(r)
        times.append((time.perf_counter() - t0) / calls)
    return compile_s, statistics.median(times), out


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def run_case(c: dict[str, Any]) -> list[dict[str, Any]]:
    (T, B, H), cell = c["shape"], c["cell"]
    own, s0, xw, w = layer_problem(cell, T, B, H, c["dtype"])
    def loop(kernel: str) -> Loop:  # as a training run at this shape would run it
        return resolve(Config(cell=cell, hidden=H, num_steps=T, dtype=c["dtype"], kernel=kernel))
    base = dict(cell=cell, T=T, B=B, H=H, dtype=c["dtype"], precision=c["precision"])
    rows = []
    with jax.default_matmul_precision(c["precision"]):
        scan = loop("scan")
        cs, ms, ref = timed(step_fn(scan, w), (own, s0, xw))
        rows.append(dict(base, impl=f"scan u{scan.unroll}", compile_s=cs, step_ms=ms * 1e3, tokens_per_s=T * B / ms))
        old = {name: getattr(module, attr) for name, (module, attr) in TUNABLE.items()}
        try:
            for name, (module, attr) in TUNABLE.items():
                setattr(module, attr, c.get(name, old[name]))
            if kernels.on_chip(H, cells.CELLS[cell].gates, c["dtype"]):
                impl = f"pallas b{kernels.BLOCK} w{kernels.WARPS}"
            else:  # the per-step kernels
                sk = step_kernels
                impl = f"pallas r{sk.ROWS} c{sk.COLS}/{sk.BACK_COLS} k{sk.CHUNK} w{kernels.WARPS} s{sk.STAGES}"
            try:
                cs, ms, got = timed(step_fn(loop("pallas"), w), (own, s0, xw))
            except Exception as e:  # noqa: BLE001 (a shape the compiler refuses is a result)
                return rows + [dict(base, impl=impl, error=f"{type(e).__name__}: {str(e).splitlines()[0][:300]}")]
        finally:
            for name, (module, attr) in TUNABLE.items():
                setattr(module, attr, old[name])
    (_, hs_ref), g_ref = ref
    (_, hs), g = got
    err = max([rel(hs, hs_ref)] + [rel(a, b) for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref))])
    rows.append(dict(base, impl=impl, compile_s=cs, step_ms=ms * 1e3, tokens_per_s=T * B / ms, err=err))
    return rows


def decode_rows(quick: bool) -> list[dict[str, Any]]:
    """Greedy decoding of 1000 characters after a 14-character prompt, the scan loop against the kernel,
    for 1 and 256 prompts; the tokens must agree (float32, precision highest)."""
    rows = []
    for cell in FORMS:
        models = {impl: ScratchRNNLM(ModelConfig(28, 32, Loop(cell, run="kernels", decode=d), sigma=0.3))
                  for impl, d in (("scan", "scan"), ("pallas", "kernel"))}
        params = models["scan"].init(jax.random.PRNGKey(1))
        for batch in (1, 256):
            prompts = [np.arange(14) % 28] * batch
            base = dict(cell=cell, T=1000, B=batch, H=32, dtype="float32", precision="highest")
            with jax.default_matmul_precision("highest"):
                got = {}
                for impl, model in models.items():
                    try:
                        cs, ms, toks = timed(functools.partial(generate, model, params, prompts, 1000),
                                             (), rounds=3, calls=3)
                    except Exception as e:  # noqa: BLE001
                        rows.append(dict(base, impl=f"decode {impl}", error=f"{type(e).__name__}: {str(e)[:300]}"))
                        continue
                    got[impl] = toks
                    rows.append(dict(base, impl=f"decode {impl}", compile_s=cs, step_ms=ms * 1e3,
                                     tokens_per_s=1000 * batch / ms))
                if len(got) == 2:
                    rows[-1]["err"] = float((got["scan"] != got["pallas"]).mean())  # fraction of tokens that differ
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    head = f"{'cell':<7} {'T':>5} {'B':>5} {'H':>4} {'dtype':<8} {'prec':<7} {'impl':<28} {'compile_s':>9} " \
           f"{'step_ms':>9} {'tokens/s':>13} {'err':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lead = f"{r['cell']:<7} {r['T']:>5} {r['B']:>5} {r['H']:>4} {r['dtype']:<8} {r['precision']:<7} {r['impl']:<28}"
        if "error" in r:
            lines.append(f"{lead} FAILED {r['error'][:120]}")
            continue
        err = f"{r['err']:8.1e}" if r.get("err") is not None else f"{'-':>8}"
        lines.append(f"{lead} {r['compile_s']:9.2f} {r['step_ms']:9.3f} {r['tokens_per_s']:13,.0f} {err}")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the seed shape only, float32 (a check that it runs)")
    p.add_argument("--json-out")
    p.add_argument("--budget", type=float, default=600, help="seconds: cases after it are skipped")
    a = p.parse_args()
    print(f"kernel_sweep: jax {jax.__version__} on {jax.devices()[0].device_kind}", file=sys.stderr, flush=True)
    start, rows = time.perf_counter(), []
    for c in cases(a.quick):
        if time.perf_counter() - start > a.budget:
            print(f"kernel_sweep: budget spent, skipping {c}", file=sys.stderr, flush=True)
            continue
        new = run_case(c)
        for r in new:
            print(json.dumps(r), file=sys.stderr, flush=True)
        rows += new
    rows += decode_rows(a.quick)
    print(table(rows), flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
