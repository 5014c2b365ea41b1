"""Language models behind one interface: `forward(params, tokens, state) -> (logits, state)`.

`ScratchRNNLM` is d2l's RNNLMScratch on the pure functions of `cells.py`; `ConciseRNNLM` is d2l's concise
RNNLM: Flax's `nn.SimpleCell` unrolled by `nn.scan`, with an `nn.Dense` head. Both take LSTM and GRU
cells as drop-in replacements (`cell`): the scratch ones from `cells.py`, the concise ones Flax's
`nn.OptimizedLSTMCell` and `nn.GRUCell`. Both are frozen dataclasses, so they are hashable and can
be closed over by jitted functions. The recurrent state is a pytree: `h [B, H]`, or a pair for the
LSTM (scratch `(h, c)`, Flax `(c, h)`), and a tuple of those with `layers` > 1. `forward` takes a
PRNG key only in training, where it draws the dropout masks; without one it is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxrnn import cells
from jaxrnn.cells import State
from jaxrnn.config import Config

Params = Any  # a pytree of arrays


class LanguageModel(Protocol):
    vocab_size: int
    hidden: int
    dropout: float

    def init(self, key: Array) -> Params: ...

    def init_state(self, batch_size: int) -> State: ...

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None
                ) -> tuple[Array, State]: ...


def _cast(tree: Params, dtype: str) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype), tree)


def layer_name(i: int) -> str:
    """The params key of recurrent layer `i` (0-based): 'rnn', then 'rnn_2', 'rnn_3', ..."""
    return "rnn" if i == 0 else f"rnn_{i + 1}"


def zero_states(cell: str, batch_size: int, hidden: int, layers: int) -> State:
    """The initial state of `layers` stacked cells: the cell's own for one layer, else a tuple."""
    one = cells.zero_state(cell, batch_size, hidden)
    return one if layers == 1 else tuple(one for _ in range(layers))


def per_layer(state: State, layers: int) -> tuple[State, ...]:
    """A model's state as one state per layer (the inverse of `joined`)."""
    return (state,) if layers == 1 else tuple(state)


def joined(states: list[State]) -> State:
    """Per-layer states as the model's state: the only one for one layer, else a tuple."""
    return states[0] if len(states) == 1 else tuple(states)


def dropout(x: Array, rate: float, key: Array | None, i: int) -> Array:
    """Inverted dropout with the `i`-th key folded from `key`; the identity when `key` is None
    (evaluation, sampling) or the rate is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


@dataclass(frozen=True)
class ScratchRNNLM:
    """Cells from pure functions (tanh RNN, LSTM or GRU), `layers` of them stacked, plus a linear head
    `W_hq, b_q` (normal(sigma) init, zero bias). Inputs are one-hot, or rows of an `embed`-wide
    table `E` when `embed` > 0; with `tie` the head is `E^T` (embed == hidden) and only `b_q` is its
    own. Dropout, in training only, drops embedded inputs and every layer's output states. The
    state is the cell's for one layer, a tuple of the layers' states for more."""

    vocab_size: int
    hidden: int
    sigma: float = 0.01
    unroll: int = 1
    dtype: str = "float32"
    hoisted_backward: bool = True  # see cells.tanh_recurrence
    cell: str = "rnn"
    gru_reset: str = "after"  # see cells.py
    layers: int = 1
    embed: int = 0
    tie: bool = False
    dropout: float = 0.0

    def init(self, key: Array) -> Params:
        k_rnn, k_out = jax.random.split(key)  # as d2l's one-layer model; more draw from folds of the key
        k_emb = jax.random.fold_in(key, 1)
        inputs = self.embed or self.vocab_size
        params = {
            layer_name(i): cells.cell_init(jax.random.fold_in(k_rnn, i) if i else k_rnn,
                                           inputs if i == 0 else self.hidden, self.hidden, self.sigma, self.cell,
                                           self.gru_reset)
            for i in range(self.layers)
        }
        if self.embed:
            params["embed"] = {"E": self.sigma * jax.random.normal(k_emb, (self.vocab_size, self.embed))}
        head = {} if self.tie else {"W_hq": self.sigma * jax.random.normal(k_out, (self.hidden, self.vocab_size))}
        params["head"] = {**head, "b_q": jnp.zeros(self.vocab_size)}
        return params

    def init_state(self, batch_size: int) -> State:
        return zero_states(self.cell, batch_size, self.hidden, self.layers)

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None
                ) -> tuple[Array, State]:
        plan = (self.unroll, self.dtype, self.hoisted_backward, self.cell, self.gru_reset)
        if self.embed:
            x = dropout(params["embed"]["E"][tokens_BxT.T], self.dropout, key, self.layers)
        new = []
        for i, s in enumerate(per_layer(state, self.layers)):
            p = params[layer_name(i)]
            s, hs_TxBxH = (cells.dense_unroll(p, s, x, *plan) if i or self.embed
                           else cells.rnn_unroll(p, s, tokens_BxT.T, *plan))
            x = dropout(hs_TxBxH, self.dropout, key, i)
            new.append(_cast(s, "float32"))
        W_hq = params["embed"]["E"].T if self.tie else params["head"]["W_hq"]
        logits_TxBxV = x @ W_hq.astype(self.dtype) + params["head"]["b_q"].astype(self.dtype)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), joined(new)


FLAX_CELLS: dict[str, type[nn.RNNCellBase]] = {
    "rnn": nn.SimpleCell,
    "lstm": nn.OptimizedLSTMCell,  # nn.LSTMCell's parameters, the four gates' matmuls fused
    "gru": nn.GRUCell,
}


class _ConciseNet(nn.Module):
    """One-hot (or nn.Embed) inputs -> `layers` x nn.scan(Flax cell) -> nn.Dense (or the tied
    embedding), time-major inside; dropout as the scratch model's."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"
    cell: str = "rnn"
    layers: int = 1
    embed: int = 0
    tie: bool = False
    dropout: float = 0.0

    @nn.compact
    def __call__(self, tokens_BxT: Array, state: State, train: bool = False) -> tuple[Array, State]:
        drop = nn.Dropout(self.dropout, deterministic=not train)
        if self.embed:
            table = nn.Embed(self.vocab_size, self.embed, name="embed")
            x = drop(table(tokens_BxT.T).astype(self.dtype))
        else:
            x = jax.nn.one_hot(tokens_BxT.T, self.vocab_size, dtype=self.dtype)
        new = []
        for i, s in enumerate(per_layer(state, self.layers)):
            scan = nn.scan(FLAX_CELLS[self.cell], variable_broadcast="params", split_rngs={"params": False},
                           in_axes=0, out_axes=0, unroll=self.unroll)
            s, hs_TxBxH = scan(features=self.hidden, dtype=self.dtype, name=layer_name(i))(_cast(s, self.dtype), x)
            x = drop(hs_TxBxH)
            new.append(_cast(s, "float32"))
        if self.tie:
            logits_TxBxV = table.attend(x) + self.param("head_bias", nn.initializers.zeros, (self.vocab_size,))
        else:
            logits_TxBxV = nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(x)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), joined(new)


@dataclass(frozen=True)
class ConciseRNNLM:
    """d2l's concise RNN: `nn.scan` over `nn.SimpleCell` (or Flax's LSTM or GRU cell; Flax's default
    inits) and an `nn.Dense` head; layers, embedding, tying and dropout as `ScratchRNNLM`'s."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"
    cell: str = "rnn"
    layers: int = 1
    embed: int = 0
    tie: bool = False
    dropout: float = 0.0

    @property
    def net(self) -> _ConciseNet:
        return _ConciseNet(self.vocab_size, self.hidden, self.unroll, self.dtype, self.cell, self.layers, self.embed,
                           self.tie, self.dropout)

    def init(self, key: Array) -> Params:
        tokens = jnp.zeros((1, 1), jnp.int32)
        return self.net.init(key, tokens, self.init_state(1))["params"]

    def init_state(self, batch_size: int) -> State:
        return zero_states(self.cell, batch_size, self.hidden, self.layers)

    def forward(self, params: Params, tokens_BxT: Array, state: State, key: Array | None = None
                ) -> tuple[Array, State]:
        if key is None:
            return self.net.apply({"params": params}, tokens_BxT, state)
        return self.net.apply({"params": params}, tokens_BxT, state, True, rngs={"dropout": key})


def build_model(cfg: Config, vocab_size: int) -> LanguageModel:
    """The model a config names, tuned for the default backend where the config leaves it open."""
    hoisted, unroll = recurrence_plan(cfg.hidden, jax.default_backend(), cfg.cell)
    unroll = min(cfg.unroll or unroll, cfg.num_steps)
    shape = dict(layers=cfg.layers, embed=cfg.embed, tie=cfg.tie, dropout=cfg.dropout)
    if cfg.impl == "scratch":
        return ScratchRNNLM(vocab_size, cfg.hidden, cfg.sigma, unroll, cfg.dtype, hoisted, cfg.cell, cfg.gru_reset,
                            **shape)
    return ConciseRNNLM(vocab_size, cfg.hidden, unroll, cfg.dtype, cfg.cell, **shape)


def recurrence_plan(hidden: int, backend: str, cell: str = "rnn") -> tuple[bool, int]:
    """(hoisted backward?, scan unroll), the fastest measured (docs/benchmarks.md): on GPUs the
    hoisted backward of `cells.tanh_recurrence` with unroll 8 (1.2-1.4x over autodiff); on CPUs,
    for small tanh RNNs autodiff's backward fully unrolled, for large ones the hoisted backward with
    no unroll (about 10% either way); LSTM and GRU on CPUs with no unroll (at the seed shape unroll 4
    is 1.3-1.8x slower, unroll 8 2-4x)."""
    if backend != "cpu":
        return True, 8
    if cell != "rnn":
        return False, 1
    return (False, 32) if hidden < 128 else (True, 1)
