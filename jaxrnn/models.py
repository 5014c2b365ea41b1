"""Language models behind one interface: `forward(params, tokens, state) -> (logits, state)`.

`ScratchRNNLM` is d2l's RNNLMScratch on the pure functions of `cells.py`; `ConciseRNNLM` is d2l's concise
RNNLM: Flax's `nn.SimpleCell` unrolled by `nn.scan`, with an `nn.Dense` head. Both take any cell of
`cells.CELLS` as a drop-in replacement, the concise model the cell's Flax twin (`nn.OptimizedLSTMCell`,
`nn.GRUCell`). Both are frozen dataclasses of one `ModelConfig`, so they are hashable and can be
closed over by jitted functions. The recurrent state is a pytree: `h [B, H]`, or a pair for the
LSTM (scratch `(h, c)`, Flax `(c, h)`), and a tuple of those with `layers` > 1. `forward` takes a
PRNG key only in training, where it draws the dropout masks (keeping values with the probability `keep`,
a replica's own inside a sweep's program, or 1 - the config's rate); without one it is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxrnn import cells, kernels
from jaxrnn.cells import Loop, State
from jaxrnn.config import Config
from jaxrnn.execution import resolve

Params = Any  # a pytree of arrays


@dataclass(frozen=True)
class ModelConfig:
    """One model's shape, as both implementations read it: vocab, width, depth, input embedding, head
    tying, dropout, the scratch model's init, and the cell with its loop (`cells.Loop`)."""

    vocab_size: int
    hidden: int
    loop: Loop = Loop()  # the cell, its form, and how its loop runs
    layers: int = 1
    embed: int = 0  # width of an input embedding table; 0: one-hot inputs
    tie: bool = False  # the head is the embedding's transpose (embed == hidden)
    dropout: float = 0.0
    sigma: float = 0.01  # std of the scratch model's normal init (d2l's); the Flax model uses Flax's inits

    @property
    def cell(self) -> str:
        return self.loop.cell


class LanguageModel(Protocol):
    cfg: ModelConfig

    def init(self, key: Array) -> Params: ...

    def init_state(self, batch_size: int) -> State: ...

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None,
                keep: Array | None = None) -> tuple[Array, State]: ...


def _cast(tree: Params, dtype: str) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def layer_name(i: int) -> str:
    """The params key of recurrent layer `i` (0-based): 'rnn', then 'rnn_2', 'rnn_3', ..."""
    return "rnn" if i == 0 else f"rnn_{i + 1}"


def zero_states(cfg: ModelConfig, batch_size: int) -> State:
    """The initial state of the model's stacked cells: the cell's own for one layer, else a tuple."""
    one = cells.zero_state(cfg.cell, batch_size, cfg.hidden)
    return one if cfg.layers == 1 else tuple(one for _ in range(cfg.layers))


def per_layer(state: State, layers: int) -> tuple[State, ...]:
    """A model's state as one state per layer (the inverse of `joined`)."""
    return (state,) if layers == 1 else tuple(state)


def joined(states: list[State]) -> State:
    """Per-layer states as the model's state: the only one for one layer, else a tuple."""
    return states[0] if len(states) == 1 else tuple(states)


def over(x: Array, d: float | Array) -> Array:
    """`x / d` as XLA computes it for a constant `d` (times its reciprocal) also where `d` is a traced value (a
    true division there), so that a replica's dropout with its own keep probability is its solo run's bit for bit."""
    return x / d if isinstance(d, (int, float)) else x * (1 / d.astype(jnp.result_type(x, float)))


def dropout(x: Array, keep: float | Array, key: Array | None, i: int) -> Array:
    """Inverted dropout keeping each value with probability `keep` (a traced value: a replica's own), with
    the `i`-th key folded from `key`; the identity when `key` is None (evaluation, sampling) or `keep` is 1."""
    if key is None or (isinstance(keep, float) and keep == 1.0):
        return x
    kept = jax.random.bernoulli(jax.random.fold_in(key, i), keep, x.shape)
    return jnp.where(kept, over(x, keep), 0).astype(x.dtype)


class Dropout(nn.Dropout):
    """Flax's `nn.Dropout` (its name, so the same masks from the same rng stream, and its arithmetic) whose
    keep probability may be given at the call as a traced value (a replica's own)."""

    @nn.compact
    def __call__(self, inputs: Array, keep: Array | None = None) -> Array:  # type: ignore[override]
        if self.rate == 0.0 or self.deterministic:
            return inputs
        keep = 1.0 - self.rate if keep is None else keep
        mask = jax.random.bernoulli(self.make_rng(self.rng_collection), p=keep, shape=inputs.shape)
        return jax.lax.select(mask, over(inputs, keep), jnp.zeros_like(inputs))


@dataclass(frozen=True)
class ScratchRNNLM:
    """Cells from pure functions (`cells.CELLS`), `layers` of them stacked, plus a linear head `W_hq,
    b_q` (normal(sigma) init, zero bias). Inputs are one-hot, or rows of an `embed`-wide table `E`;
    with `tie` the head is `E^T` and only `b_q` is its own. Dropout, in training only, drops embedded
    inputs and every layer's output states. The state is the cell's for one layer, a tuple of the
    layers' states for more."""

    cfg: ModelConfig

    def init(self, key: Array) -> Params:
        c = self.cfg
        k_rnn, k_out = jax.random.split(key)  # as d2l's one-layer model; more draw from folds of the key
        k_emb = jax.random.fold_in(key, 1)
        inputs = c.embed or c.vocab_size
        params = {
            layer_name(i): cells.cell_init(jax.random.fold_in(k_rnn, i) if i else k_rnn, inputs if i == 0 else c.hidden,
                                           c.hidden, c.sigma, c.cell, c.loop.options)
            for i in range(c.layers)
        }
        if c.embed:
            params["embed"] = {"E": c.sigma * jax.random.normal(k_emb, (c.vocab_size, c.embed))}
        head = {} if c.tie else {"W_hq": c.sigma * jax.random.normal(k_out, (c.hidden, c.vocab_size))}
        params["head"] = {**head, "b_q": jnp.zeros(c.vocab_size)}
        return params

    def init_state(self, batch_size: int) -> State:
        return zero_states(self.cfg, batch_size)

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None,
                keep: Array | None = None) -> tuple[Array, State]:
        c, dtype = self.cfg, self.cfg.loop.dtype
        keep = 1.0 - c.dropout if keep is None else keep
        if c.embed:
            x = dropout(params["embed"]["E"][tokens_BxT.T], keep, key, c.layers)
        new = []
        for i, s in enumerate(per_layer(state, c.layers)):
            p = params[layer_name(i)]
            s, hs_TxBxH = (cells.dense_unroll(p, s, x, c.loop) if i or c.embed
                           else cells.rnn_unroll(p, s, tokens_BxT.T, c.loop))
            x = dropout(hs_TxBxH, keep, key, i)
            new.append(_cast(s, "float32"))
        W_hq = params["embed"]["E"].T if c.tie else params["head"]["W_hq"]
        logits_TxBxV = x @ W_hq.astype(dtype) + params["head"]["b_q"].astype(dtype)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), joined(new)

    def greedy(self, params: Params, state: State, tok_B: Array, num_preds: int) -> Array:
        """Greedy tokens [B, N], `tok_B` first, from the state after the warm-up, as one Pallas kernel
        (`kernels.greedy_decode`); for cells with a matmul-then-update step (`cells.Cell.update`)."""
        c, dtype = self.cfg, self.cfg.loop.dtype
        embed = params["embed"]["E"] if c.embed else None
        W_hq = embed.T if c.tie else params["head"]["W_hq"]
        layers = [params[layer_name(i)] for i in range(c.layers)]
        spec = c.loop.spec
        return kernels.greedy_decode(spec.update, spec.gates, spec.matmul_gates, layers, embed, W_hq.astype(dtype),
                                     params["head"]["b_q"], list(per_layer(state, c.layers)), tok_B, num_preds)


class _ConciseNet(nn.Module):
    """One-hot (or nn.Embed) inputs -> `layers` x nn.scan(Flax cell) -> nn.Dense (or the tied
    embedding), time-major inside; dropout as the scratch model's."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens_BxT: Array, state: State, train: bool = False, keep: Array | None = None
                 ) -> tuple[Array, State]:
        c, dtype = self.cfg, self.cfg.loop.dtype
        drop = Dropout(c.dropout, deterministic=not train)
        if c.embed:
            table = nn.Embed(c.vocab_size, c.embed, name="embed")
            x = drop(table(tokens_BxT.T).astype(dtype), keep)
        else:
            x = jax.nn.one_hot(tokens_BxT.T, c.vocab_size, dtype=dtype)
        twin = getattr(nn, cells.CELLS[c.cell].flax)
        new = []
        for i, s in enumerate(per_layer(state, c.layers)):
            scan = nn.scan(twin, variable_broadcast="params", split_rngs={"params": False}, in_axes=0, out_axes=0,
                           unroll=c.loop.unroll)
            s, hs_TxBxH = scan(features=c.hidden, dtype=dtype, name=layer_name(i))(_cast(s, dtype), x)
            x = drop(hs_TxBxH, keep)
            new.append(_cast(s, "float32"))
        if c.tie:
            logits_TxBxV = table.attend(x) + self.param("head_bias", nn.initializers.zeros, (c.vocab_size,))
        else:
            logits_TxBxV = nn.Dense(c.vocab_size, dtype=dtype, name="head")(x)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), joined(new)


@dataclass(frozen=True)
class ConciseRNNLM:
    """d2l's concise RNN: `nn.scan` over `nn.SimpleCell` (or the cell's Flax twin, `cells.Cell.flax`;
    Flax's default inits) and an `nn.Dense` head; layers, embedding, tying and dropout as
    `ScratchRNNLM`'s. The loop's `fast` and the scratch `sigma` do not apply."""

    cfg: ModelConfig

    def init(self, key: Array) -> Params:
        tokens = jnp.zeros((1, 1), jnp.int32)
        return _ConciseNet(self.cfg).init(key, tokens, self.init_state(1))["params"]

    def init_state(self, batch_size: int) -> State:
        return zero_states(self.cfg, batch_size)

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None,
                keep: Array | None = None) -> tuple[Array, State]:
        net = _ConciseNet(self.cfg)
        if key is None:
            return net.apply({"params": params}, tokens_BxT, state)
        return net.apply({"params": params}, tokens_BxT, state, True, keep, rngs={"dropout": key})


def model_config(cfg: Config, vocab_size: int, loop: Loop | None = None) -> ModelConfig:
    """The model a run's config names, its loop as `execution.resolve` decides it for JAX's default backend."""
    return ModelConfig(vocab_size, cfg.hidden, loop or resolve(cfg), cfg.layers, cfg.embed, cfg.tie, cfg.dropout,
                       cfg.sigma)


def build_model(cfg: Config, vocab_size: int, loop: Loop | None = None) -> LanguageModel:
    """The model a config names: `ScratchRNNLM` or `ConciseRNNLM` on its `model_config` (its loop
    resolved unless given: `loop`, from `execution.resolve`)."""
    model = ScratchRNNLM if cfg.impl == "scratch" else ConciseRNNLM
    return model(model_config(cfg, vocab_size, loop))
