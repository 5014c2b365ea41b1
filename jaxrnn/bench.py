"""`jaxrnn bench`: jaxrnn against the chapters' way in JAX (`d2l-way`) and PyTorch, as ratios in one run.

Cases: `seed-train` (the seed config), `large-train` (a big model: train tokens/s), `wide-train` (hidden
256, batch 64, 64 steps), `decode-1` and `decode-256` (greedy, 1000 new characters for 1 and 256 prompts),
each for the tanh RNN, the LSTM and the GRU, or any cells of the registry (`--cells`); and `big-corpus` (a
generated 100 MB text read, counted and encoded in a fresh process: seconds, characters/s and the peak host
memory it added per character). `jaxrnn-scan` and `jaxrnn-sequence` are the scratch model with its loop
forced to the step loop or to the cell's whole-sequence form (a parallel scan; the tanh RNN's hoisted
backward), for the cells that have one. How each implementation is timed, and the rows' fields, are
`bench_impls`'. torch rows appear when torch is installed (`pip install 'jaxrnn[bench]'`).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any

import jax

from jaxrnn import bench_impls, cells, strict_json
from jaxrnn.config import DTYPES, PRECISIONS, Config
from jaxrnn.data import Corpus, load_corpus

CASES = ("seed-train", "large-train", "wide-train", "decode-1", "decode-256", "big-corpus")
BIG_CHARS = 100_000_000  # the big-corpus case's text (10 M with --quick)
IMPLS = ("jaxrnn-scratch", "jaxrnn-scan", "jaxrnn-sequence", "jaxrnn-concise", "jaxrnn-pallas", "d2l-way", "torch")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="reduced cases (10 epochs, fewer steps); ratios still hold")
    p.add_argument("--json-out", metavar="FILE", help="also write the rows as a JSON list")
    p.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES), help="cases to run (default all)")
    p.add_argument("--impls", nargs="+", choices=IMPLS, help="implementations (default all; jaxrnn-pallas, the scratch "
                   "cells' Pallas kernels, on GPUs only: a CPU runs them in interpret mode)")
    raced = [name for name, cell in cells.CELLS.items() if cell.torch]
    p.add_argument("--cells", nargs="+", choices=list(cells.CELLS), default=raced,
                   help=f"recurrent cells (default those with a PyTorch twin: {' '.join(raced)})")
    p.add_argument("--data", metavar="FILE", help="corpus (default The Time Machine)")
    p.add_argument("--precision", choices=PRECISIONS, default="highest", help="float32 matmul precision of every "
                   "row: highest (true float32; torch with TF32 off), or default (TF32 on GPUs: cuDNN's own default; "
                   "torch with TF32 on, as for high, which is bfloat16 x3 in JAX)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="compute dtype of the jaxrnn and torch rows")


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- big-corpus: loading a large text

_LOAD = """
import json, resource, sys, time
import numpy as np
from jaxrnn.data import load_corpus
from jaxrnn.batching import batch_slice, sequential_plan


def high_water() -> int:
    # VmHWM is this process' own peak; ru_maxrss survives exec, so it starts at the launching process' peak
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


before = high_water()
t = time.perf_counter()
c = load_corpus(sys.argv[1], 64, preprocessing="none", split=(0.9, 0.1, 0.0))
seconds = time.perf_counter() - t
n = c.spans["train"][1]
plan = sequential_plan(0, 0, n, 64, 64)
t = time.perf_counter()
rounds = [batch_slice(0, 0, n, 64, k * 700, (k + 1) * 700) for k in range(3)]  # random batching, by steps
round_s = (time.perf_counter() - t) / 3
peak = high_water()
print(json.dumps({"seconds": seconds, "chars": len(c.tokens), "dtype": str(c.tokens.dtype),
                  "added_bytes": peak - before, "vocab": len(c.vocab), "round_s": round_s}))
"""


def big_corpus(quick: bool) -> dict[str, Any]:
    """Write a generated text of BIG_CHARS characters (The Time Machine's raw text over and over, each copy
    with its own line numbers, so the vocab is the text's plus digits), then load it in a fresh process:
    reading, counting the vocab and encoding to the smallest integer type, timed; the batch plans of an
    epoch of sequential batching and of three 700-step rounds of random batching (timed per round);
    and the peak resident memory all that added (the child's own VmHWM), per character."""
    import subprocess
    import tempfile

    chars = BIG_CHARS // 10 if quick else BIG_CHARS
    base = load_corpus(None).path.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/big.txt"
        with open(path, "w") as f:
            written, copy = 0, 0
            while written < chars:
                part = f"{copy}\n{base}"[: chars - written]
                written += f.write(part)
                copy += 1
        out = subprocess.run([sys.executable, "-c", _LOAD, path], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    log(f"big-corpus: {r['chars'] / 1e6:.1f} M characters as {r['dtype']} (vocab {r['vocab']}) in "
        f"{r['seconds']:.2f} s, {r['added_bytes'] / r['chars']:.2f} bytes per character at peak; a 700-step "
        f"round of random batches planned in {r['round_s']:.2f} s")
    return {**bench_impls.row("big-corpus", "jaxrnn", r["seconds"], None, r["chars"] / r["seconds"], cell="-"),
            "bytes_per_char": r["added_bytes"] / r["chars"], "chars": r["chars"], "dtype": r["dtype"],
            "round_s": r["round_s"]}


# ---------------------------------------------------------------- the suite

def case_configs(case: str, quick: bool, on_gpu: bool) -> tuple[Config, int]:
    """The config each case trains or decodes with, and its repetition count."""
    if case == "seed-train":
        return Config(epochs=10 if quick else 100), 0
    if case in ("large-train", "wide-train"):
        hidden, batch, steps = (1024, 128, 256) if on_gpu else (256, 64, 128)
        if case == "wide-train":
            hidden, batch, steps = 256, 64, 64
        iters = (10 if quick else 40) if not on_gpu else (20 if quick else 100)
        return Config(hidden=hidden, batch_size=batch, num_steps=steps, num_train=batch * iters, num_val=batch,
                      epochs=2, save_every=1), 0
    return Config(), 3 if quick else 10


def run_suite(args: argparse.Namespace) -> list[dict[str, Any]]:
    on_gpu = jax.default_backend() == "gpu"
    impls = args.impls or [i for i in IMPLS if i != "jaxrnn-pallas" or on_gpu]
    have_torch = bench_impls.torch_available()
    if "torch" in impls and not have_torch:
        log("torch is not installed: no torch rows (pip install 'jaxrnn[bench]')")
    rows: list[dict[str, Any]] = []
    corpora: dict[int, Corpus] = {}
    for case in args.cases:
        if case == "big-corpus":
            rows.append(big_corpus(args.quick))
            continue
        base, reps = case_configs(case, args.quick, on_gpu)
        if base.num_steps not in corpora:
            corpora[base.num_steps] = load_corpus(args.data, base.num_steps, 10000, 5000)
        corpus = corpora[base.num_steps]
        if case in ("large-train", "wide-train"):
            corpus = corpus.head(base.num_train, base.num_val)
        batch = 256 if case == "decode-256" else 1
        training = case.endswith("train")
        for cell in args.cells:
            cfg, twins = base.replace(cell=cell, dtype=args.dtype, precision=args.precision), cells.CELLS[cell]
            for impl in impls:
                missing = {"torch": not (have_torch and twins.torch), "jaxrnn-concise": not twins.flax,
                           "jaxrnn-pallas": not twins.kernels,
                           **dict.fromkeys(bench_impls.RUNS, not twins.sequence or not training)}
                if missing.get(impl):
                    continue
                log(f"{case} {cell} {impl} ...")
                try:
                    r = _one_row(case, impl, cfg, corpus, batch, reps, training)
                except Exception as e:  # noqa: BLE001 (a row that fails, a kernel that does not compile, is a result)
                    log(f"{case} {cell} {impl} failed: {type(e).__name__}: {e}")
                    r = {**bench_impls.row(case, impl, None, None, None, cell=cell),
                         "error": f"{type(e).__name__}: {e}"[:300]}
                rows.append(r if impl == "d2l-way" else {**r, "dtype": cfg.dtype, "precision": cfg.precision})
    return rows


def _one_row(case: str, impl: str, cfg: Config, corpus: Corpus, batch: int, reps: int, training: bool
             ) -> dict[str, Any]:
    """One implementation's row of a case."""
    if impl.startswith("jaxrnn-"):
        c = cfg.replace(impl="flax" if impl == "jaxrnn-concise" else "scratch",
                        kernel="pallas" if impl == "jaxrnn-pallas" else "scan")
        if training:
            return bench_impls.jaxrnn_train(case, impl, c, corpus)
        return bench_impls.jaxrnn_decode(case, impl, c, corpus, batch, reps)
    if impl == "d2l-way":
        if training:
            return bench_impls.d2l_way_train(case, cfg, corpus)
        return bench_impls.d2l_way_decode(case, cfg, corpus, batch, reps)
    return bench_impls.torch_rows(case, cfg, corpus, batch, reps)


def _fmt(v: Any, spec: str) -> str:
    """`v` formatted by `spec`, or a '-' of the same width where it does not apply."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(int(re.match(r"\d*", spec).group() or 0))
    return format(v, spec)


def table(rows: list[dict[str, Any]]) -> str:
    """Rows with each one's tokens/s as a ratio to the d2l-way and torch rows of the same case."""
    head = f"{'case':<12} {'cell':<7} {'impl':<15} {'backend':<7} {'wall_s':>8} {'compile_s':>9} {'tokens/s':>11} " \
           f"{'val_ppl':>7} {'x d2l-way':>9} {'x torch':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        base = {b["impl"]: b["tokens_per_s"] for b in rows if b["case"] == r["case"] and b["cell"] == r["cell"]}
        ratio = [(r["tokens_per_s"] / base[k]) if base.get(k) and r["tokens_per_s"] else None
                 for k in ("d2l-way", "torch")]
        lines.append(f"{r['case']:<12} {r['cell']:<7} {r['impl']:<15} {r['backend']:<7} {_fmt(r['wall_s'], '8.3f')} "
                     f"{_fmt(r['compile_s'], '9.2f')} {_fmt(r['tokens_per_s'], '11,.0f')} {_fmt(r['val_ppl'], '7.2f')} "
                     f"{_fmt(ratio[0], '9.2f')} {_fmt(ratio[1], '8.2f')}"
                     + (f"  failed: {r['error'][:80]}" if "error" in r else ""))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    log(f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}); "
        f"{'quick' if args.quick else 'full'} run")
    rows = run_suite(args)
    print(table(rows), flush=True)
    for r in rows:
        if r["case"] == "big-corpus":
            print(f"big-corpus: {r['chars'] / 1e6:.0f} M characters read, counted and encoded ({r['dtype']}) in "
                  f"{r['wall_s']:.2f} s; peak host memory added {r['bytes_per_char']:.2f} bytes per character",
                  flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            f.write(strict_json.dumps(rows, indent=1))
    return 0
