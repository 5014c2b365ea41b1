"""`jaxrnn bench`: jaxrnn against the chapters' way in JAX (`d2l-way`) and PyTorch, as ratios in one run.

Cases: `seed-train` (the seed config), `large-train` (a big model: train tokens/s), `wide-train` (hidden
256, batch 64, 64 steps), `decode-1` and `decode-256` (greedy, 1000 new characters for 1 and 256 prompts),
each for the tanh RNN, the LSTM and the GRU, or any cells of the registry (`--cells`); and `big-corpus` (a
generated 100 MB text read, counted and encoded in a fresh process: seconds, characters/s and the peak host
memory it added per character). `jaxrnn-scan` and `jaxrnn-sequence` are the scratch model with its loop
forced to the step loop or to the cell's whole-sequence form (a parallel scan; the tanh RNN's hoisted
backward), for the cells that have one. Every row has `case, impl, cell, backend, wall_s, compile_s,
tokens_per_s, val_ppl` (null where it does not apply); wall_s excludes compilation. torch rows appear when
torch is installed (`pip install 'jaxrnn[bench]'`).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import re
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import cells, strict_json
from jaxrnn.batching import epoch_order
from jaxrnn.config import DTYPES, PRECISIONS, Config
from jaxrnn.data import PROMPT, Corpus, load_corpus
from jaxrnn.execution import resolve
from jaxrnn.models import build_model
from jaxrnn.sample import generate
from jaxrnn.steps import init_state
from jaxrnn.training import fit, make_optimizer, perplexity

CASES = ("seed-train", "large-train", "wide-train", "decode-1", "decode-256", "big-corpus")
BIG_CHARS = 100_000_000  # the big-corpus case's text (10 M with --quick)
IMPLS = ("jaxrnn-scratch", "jaxrnn-scan", "jaxrnn-sequence", "jaxrnn-concise", "jaxrnn-pallas", "d2l-way", "torch")
RUNS = {"jaxrnn-scan": "scan", "jaxrnn-sequence": "sequence"}  # impls that force the scratch model's `Loop.run`
DECODE_CHARS = 1000


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


def row(case: str, impl: str, wall_s: float | None, compile_s: float | None, tokens_per_s: float | None,
        val_ppl: float | None = None, cell: str = "rnn", backend: str | None = None) -> dict[str, Any]:
    return {"case": case, "impl": impl, "cell": cell, "backend": backend or jax.default_backend(),
            "wall_s": wall_s, "compile_s": compile_s, "tokens_per_s": tokens_per_s, "val_ppl": val_ppl}


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- jaxrnn: fused training, jitted decoding

def jaxrnn_train(case: str, impl: str, cfg: Config, corpus: Corpus) -> dict[str, Any]:
    """Time `fit` (the fused path `jaxrnn train` uses); compilation is timed apart by `fit` itself."""
    timings: dict[str, float] = {}
    loop = dataclasses.replace(resolve(cfg), run=RUNS[impl]) if impl in RUNS else None
    _, history = fit(cfg, corpus, build_model(cfg, len(corpus.vocab), loop), timings=timings)
    tokens = cfg.epochs * len(corpus.train) * cfg.num_steps
    val = history[-1]["val_ppl"] if case == "seed-train" else None
    return row(case, impl, timings["train_s"], timings["compile_s"], tokens / timings["train_s"], val, cfg.cell)


def _time_calls(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(first call's seconds, median of `reps` later calls): the first compiles."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, statistics.median(times)


def jaxrnn_decode(case: str, impl: str, cfg: Config, corpus: Corpus, batch: int, reps: int) -> dict[str, Any]:
    model = build_model(cfg, len(corpus.vocab))
    params = model.init(jax.random.key(cfg.seed))
    prompts = [corpus.vocab.encode(PROMPT)] * batch
    with jax.default_matmul_precision(cfg.precision):
        first, wall = _time_calls(lambda: generate(model, params, prompts, DECODE_CHARS), reps)
    return row(case, impl, wall, max(first - wall, 0.0), batch * DECODE_CHARS / wall, cell=cfg.cell)


# ---------------------------------------------------------------- d2l-way: the chapters' loop in JAX

def _d2l_step(cfg: Config, p: dict, state: cells.State, x_BxV: jax.Array) -> tuple[cells.State, jax.Array]:
    """One step of d2l's scratch cells: the one-hot input's matmul inside the step, then the gates."""
    return cells.CELLS[cfg.cell].step(p, state, x_BxV @ p["W_xh"] + p["b_h"])


def _d2l_forward(cfg: Config, params: dict, X_BxT: jax.Array, V: int) -> jax.Array:
    """d2l's RNNLMScratch: one-hot inputs, the cell's step in a scan, outputs stacked, head."""
    state = cells.zero_state(cfg.cell, X_BxT.shape[0], cfg.hidden)
    step = functools.partial(_d2l_step, cfg, params["rnn"])
    _, hs_TxBxH = jax.lax.scan(step, state, jax.nn.one_hot(X_BxT.T, V))
    return (hs_TxBxH @ params["head"]["W_hq"] + params["head"]["b_q"]).swapaxes(0, 1)


def d2l_way_train(case: str, cfg: Config, corpus: Corpus) -> dict[str, Any]:
    """A Python loop over numpy batches calling a jitted loss-and-grad, the optax update applied eagerly,
    the loss read back each step (d2l's board), and validation batch by batch: the chapters' way."""
    V = len(corpus.vocab)
    model = build_model(cfg.replace(impl="scratch"), V)
    tx = make_optimizer(cfg)
    state = init_state(model, tx, cfg.seed)
    params, opt_state = state.params, state.opt_state

    def loss(p, X, Y):
        return optax.softmax_cross_entropy_with_integer_labels(_d2l_forward(cfg, p, X, V), Y).mean()

    value_and_grad = jax.jit(jax.value_and_grad(loss))
    eval_loss = jax.jit(loss)
    t_compile = time.perf_counter()
    w0 = corpus.train[: cfg.batch_size]
    jax.block_until_ready(value_and_grad(params, w0[:, :-1], w0[:, 1:]))
    jax.block_until_ready(eval_loss(params, w0[:, :-1], w0[:, 1:]))
    compile_s = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    val_ppl = None
    for epoch in range(cfg.epochs):
        order = epoch_order(cfg.seed, epoch, len(corpus.train))
        for i in range(0, len(order), cfg.batch_size):
            w = corpus.train[order[i:i + cfg.batch_size]]
            loss_value, grads = value_and_grad(params, w[:, :-1], w[:, 1:])
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            float(loss_value)
        if case == "seed-train":
            tot = sum(float(eval_loss(params, w[:, :-1], w[:, 1:])) * len(w)
                      for w in (corpus.val[i:i + cfg.batch_size] for i in range(0, len(corpus.val), cfg.batch_size)))
            val_ppl = perplexity(tot / len(corpus.val))
    wall = time.perf_counter() - t0
    tokens = cfg.epochs * len(corpus.train) * cfg.num_steps
    return row(case, "d2l-way", wall, compile_s, tokens / wall, val_ppl, cfg.cell)


def d2l_way_decode(case: str, cfg: Config, corpus: Corpus, batch: int, reps: int) -> dict[str, Any]:
    """d2l's predict: one jitted call per character, the argmax read back to Python each time."""
    V = len(corpus.vocab)
    model = build_model(cfg.replace(impl="scratch"), V)
    params = model.init(jax.random.key(cfg.seed))

    @jax.jit
    def step(p, state, X):
        state, h = _d2l_step(cfg, p["rnn"], state, jax.nn.one_hot(X, V))
        return state, h @ p["head"]["W_hq"] + p["head"]["b_q"]

    prompt = corpus.vocab.encode(PROMPT)

    def predict() -> list:
        h = cells.zero_state(cfg.cell, batch, cfg.hidden)
        out = [np.full(batch, prompt[0])]
        for i in range(len(prompt) + DECODE_CHARS - 1):
            h, Y = step(params, h, jnp.asarray(out[-1]))
            out.append(np.full(batch, prompt[i + 1]) if i < len(prompt) - 1 else np.asarray(Y.argmax(-1)))
        return out

    first, wall = _time_calls(predict, reps)
    return row(case, "d2l-way", wall, max(first - wall, 0.0), batch * DECODE_CHARS / wall, cell=cfg.cell)


# ---------------------------------------------------------------- torch: nn.RNN written well

def torch_rows(case: str, cfg: Config, corpus: Corpus, batch: int, reps: int) -> dict[str, Any]:
    """PyTorch `nn.RNN`/`nn.LSTM`/`nn.GRU` with data on the device, `clip_grad_norm_`, no host sync
    (cuDNN on GPU)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    backend = "gpu" if dev.type == "cuda" else "cpu"
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = cfg.precision != "highest"
    # bfloat16 compute under autocast, params float32 as jaxrnn's (cuDNN has bfloat16 RNNs from 9.13 on)
    autocast = functools.partial(torch.autocast, dev.type, torch.bfloat16, enabled=cfg.dtype == "bfloat16")
    V = len(corpus.vocab)
    torch.manual_seed(cfg.seed)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = getattr(nn, cells.CELLS[cfg.cell].torch)(V, cfg.hidden)
            self.head = nn.Linear(cfg.hidden, V)

        def forward(self, x_BxT, h=None):
            with autocast():
                hs, h = self.rnn(F.one_hot(x_BxT.T, V).float(), h)
                return self.head(hs).float(), h  # [T, B, V]

    model = LM().to(dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if case.startswith("decode"):
        prompt = torch.tensor(corpus.vocab.encode(PROMPT), device=dev).long().repeat(batch, 1)

        @torch.no_grad()
        def predict():
            logits, h = model(prompt)
            tok, out = logits[-1].argmax(-1), []
            for _ in range(DECODE_CHARS):
                out.append(tok)
                logits, h = model(tok[:, None], h)
                tok = logits[-1].argmax(-1)
            return torch.stack(out, 1).cpu()

        t0 = time.perf_counter()
        predict()
        first = time.perf_counter() - t0
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            predict()
            times.append(time.perf_counter() - t0)
        wall = statistics.median(times)
        return row(case, "torch", wall, max(first - wall, 0.0), batch * DECODE_CHARS / wall, cell=cfg.cell,
                   backend=backend)

    train = torch.tensor(corpus.train, device=dev).long()
    val = torch.tensor(corpus.val, device=dev).long()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)

    def step(w):
        logits, _ = model(w[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, V), w[:, 1:].T.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip, foreach=True)
        opt.step()

    def epoch():
        perm = torch.randperm(len(train), device=dev)
        for i in range(0, len(train), cfg.batch_size):
            step(train[perm[i:i + cfg.batch_size]])

    t0 = time.perf_counter()
    step(train[: cfg.batch_size])  # warm-up: allocator, cuDNN plans
    sync()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(cfg.epochs):
        epoch()
    sync()
    wall = time.perf_counter() - t0
    val_ppl = None
    if case == "seed-train":
        with torch.no_grad():
            tot = sum(F.cross_entropy(model(w[:, :-1])[0].reshape(-1, V), w[:, 1:].T.reshape(-1),
                                      reduction="sum").item() for w in val.split(cfg.batch_size))
        val_ppl = perplexity(tot / val[:, 1:].numel())
    return row(case, "torch", wall, compile_s, cfg.epochs * len(train) * cfg.num_steps / wall, val_ppl, cfg.cell,
               backend)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


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
    return {**row("big-corpus", "jaxrnn", r["seconds"], None, r["chars"] / r["seconds"], cell="-"),
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
    have_torch = torch_available()
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
                           **dict.fromkeys(RUNS, not twins.sequence or not training)}
                if missing.get(impl):
                    continue
                log(f"{case} {cell} {impl} ...")
                try:
                    r = _one_row(case, impl, cfg, corpus, batch, reps, training)
                except Exception as e:  # noqa: BLE001 (a row that fails, a kernel that does not compile, is a result)
                    log(f"{case} {cell} {impl} failed: {type(e).__name__}: {e}")
                    r = {**row(case, impl, None, None, None, cell=cell), "error": f"{type(e).__name__}: {e}"[:300]}
                rows.append(r if impl == "d2l-way" else {**r, "dtype": cfg.dtype, "precision": cfg.precision})
    return rows


def _one_row(case: str, impl: str, cfg: Config, corpus: Corpus, batch: int, reps: int, training: bool
             ) -> dict[str, Any]:
    """One implementation's row of a case."""
    if impl.startswith("jaxrnn-"):
        c = cfg.replace(impl="flax" if impl == "jaxrnn-concise" else "scratch",
                        kernel="pallas" if impl == "jaxrnn-pallas" else "scan")
        return jaxrnn_train(case, impl, c, corpus) if training else jaxrnn_decode(case, impl, c, corpus, batch, reps)
    if impl == "d2l-way":
        return d2l_way_train(case, cfg, corpus) if training else d2l_way_decode(case, cfg, corpus, batch, reps)
    return torch_rows(case, cfg, corpus, batch, reps)


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
