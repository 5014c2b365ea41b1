"""How `jaxrnn bench` times each implementation, a row each: jaxrnn's fused training and jitted decoding,
the chapters' way in JAX (`d2l-way`: a Python loop over a jitted step) and PyTorch's `nn.RNN`/`nn.LSTM`/`nn.GRU`.
Every row has `case, impl, cell, backend, wall_s, compile_s, tokens_per_s, val_ppl`; wall_s excludes compilation.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrnn import cells
from jaxrnn.batching import epoch_order
from jaxrnn.config import Config
from jaxrnn.data import PROMPT, Corpus
from jaxrnn.execution import resolve
from jaxrnn.models import build_model
from jaxrnn.sample import generate
from jaxrnn.steps import init_state
from jaxrnn.training import fit, make_optimizer, perplexity

RUNS = {"jaxrnn-scan": "scan", "jaxrnn-sequence": "sequence"}  # impls that force the scratch model's `Loop.run`
DECODE_CHARS = 1000  # new characters of each decode row


def row(case: str, impl: str, wall_s: float | None, compile_s: float | None, tokens_per_s: float | None,
        val_ppl: float | None = None, cell: str = "rnn", backend: str | None = None) -> dict[str, Any]:
    """One bench row; None where a figure does not apply."""
    return {"case": case, "impl": impl, "cell": cell, "backend": backend or jax.default_backend(),
            "wall_s": wall_s, "compile_s": compile_s, "tokens_per_s": tokens_per_s, "val_ppl": val_ppl}


# ---------------------------------------------------------------- jaxrnn: fused training, jitted decoding

def jaxrnn_train(case: str, impl: str, cfg: Config, corpus: Corpus) -> dict[str, Any]:
    """Time `fit` (the fused path `jaxrnn train` uses); compilation is timed apart by `fit` itself."""
    timings: dict[str, float] = {}
    loop = dataclasses.replace(resolve(cfg), run=RUNS[impl]) if impl in RUNS else None
    _, history = fit(cfg, corpus, build_model(cfg, len(corpus.vocab), loop), timings=timings)
    tokens = cfg.epochs * len(corpus.train) * cfg.num_steps
    val = history[-1]["val_ppl"] if case == "seed-train" else None
    return row(case, impl, timings["train_s"], timings["compile_s"], tokens / timings["train_s"], val, cfg.cell)


def time_calls(fn: Callable[[], Any], reps: int) -> tuple[float, float]:
    """(first call's seconds, median of `reps` later calls): the first compiles (or, in torch, warms up)."""
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
        first, wall = time_calls(lambda: generate(model, params, prompts, DECODE_CHARS), reps)
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

    first, wall = time_calls(predict, reps)
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

        first, wall = time_calls(predict, reps)  # predict's tensor is on the host: synchronised
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
