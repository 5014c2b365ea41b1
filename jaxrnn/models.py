"""Language models behind one interface: `forward(params, tokens, state) -> (logits, state)`.

`ScratchRNNLM` is d2l's RNNLMScratch on the pure functions of `cells.py`; `ConciseRNNLM` is d2l's concise
RNNLM: Flax's `nn.SimpleCell` unrolled by `nn.scan`, with an `nn.Dense` head. Both take LSTM and GRU
cells as drop-in replacements (`cell`): the scratch ones from `cells.py`, the concise ones Flax's
`nn.OptimizedLSTMCell` and `nn.GRUCell`. Both are frozen dataclasses, so they are hashable and can
be closed over by jitted functions. The recurrent state is a pytree: `h [B, H]`, or a pair for the
LSTM (scratch `(h, c)`, Flax `(c, h)`).
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

    def init(self, key: Array) -> Params: ...

    def init_state(self, batch_size: int) -> State: ...

    def forward(self, params: Params, tokens_BxT: Array, state: State) -> tuple[Array, State]: ...


def _cast(tree: Params, dtype: str) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype), tree)


@dataclass(frozen=True)
class ScratchRNNLM:
    """A cell from pure functions (tanh RNN, LSTM or GRU), plus a linear head `W_hq, b_q`
    (normal(sigma) init, zero bias)."""

    vocab_size: int
    hidden: int
    sigma: float = 0.01
    unroll: int = 1
    dtype: str = "float32"
    hoisted_backward: bool = True  # see cells.tanh_recurrence
    cell: str = "rnn"
    gru_reset: str = "after"  # see cells.py

    def init(self, key: Array) -> Params:
        k_rnn, k_out = jax.random.split(key)
        return {
            "rnn": cells.cell_init(k_rnn, self.vocab_size, self.hidden, self.sigma, self.cell, self.gru_reset),
            "head": {
                "W_hq": self.sigma * jax.random.normal(k_out, (self.hidden, self.vocab_size)),
                "b_q": jnp.zeros(self.vocab_size),
            },
        }

    def init_state(self, batch_size: int) -> State:
        return cells.zero_state(self.cell, batch_size, self.hidden)

    def forward(self, params: Params, tokens_BxT: Array, state: State) -> tuple[Array, State]:
        state, hs_TxBxH = cells.rnn_unroll(params["rnn"], state, tokens_BxT.T, self.unroll, self.dtype,
                                           self.hoisted_backward, self.cell, self.gru_reset)
        head = _cast(params["head"], self.dtype)
        logits_TxBxV = hs_TxBxH @ head["W_hq"] + head["b_q"]
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), _cast(state, "float32")


FLAX_CELLS: dict[str, type[nn.RNNCellBase]] = {
    "rnn": nn.SimpleCell,
    "lstm": nn.OptimizedLSTMCell,  # nn.LSTMCell's parameters, the four gates' matmuls fused
    "gru": nn.GRUCell,
}


class _ConciseNet(nn.Module):
    """One-hot inputs -> nn.scan(Flax cell) -> nn.Dense, time-major inside."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"
    cell: str = "rnn"

    @nn.compact
    def __call__(self, tokens_BxT: Array, state: State) -> tuple[Array, State]:
        x_TxBxV = jax.nn.one_hot(tokens_BxT.T, self.vocab_size, dtype=self.dtype)
        scan = nn.scan(
            FLAX_CELLS[self.cell],
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            unroll=self.unroll,
        )
        state, hs_TxBxH = scan(features=self.hidden, dtype=self.dtype, name="rnn")(_cast(state, self.dtype), x_TxBxV)
        logits_TxBxV = nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(hs_TxBxH)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), _cast(state, "float32")


@dataclass(frozen=True)
class ConciseRNNLM:
    """d2l's concise RNN: `nn.scan` over `nn.SimpleCell` (or Flax's LSTM or GRU cell; Flax's default
    inits) and an `nn.Dense` head."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"
    cell: str = "rnn"

    @property
    def net(self) -> _ConciseNet:
        return _ConciseNet(self.vocab_size, self.hidden, self.unroll, self.dtype, self.cell)

    def init(self, key: Array) -> Params:
        tokens = jnp.zeros((1, 1), jnp.int32)
        return self.net.init(key, tokens, self.init_state(1))["params"]

    def init_state(self, batch_size: int) -> State:
        return cells.zero_state(self.cell, batch_size, self.hidden)

    def forward(self, params: Params, tokens_BxT: Array, state: State) -> tuple[Array, State]:
        return self.net.apply({"params": params}, tokens_BxT, state)


def build_model(cfg: Config, vocab_size: int) -> LanguageModel:
    """The model a config names, tuned for the default backend where the config leaves it open."""
    hoisted, unroll = recurrence_plan(cfg.hidden, jax.default_backend(), cfg.cell)
    unroll = min(cfg.unroll or unroll, cfg.num_steps)
    if cfg.impl == "scratch":
        return ScratchRNNLM(vocab_size, cfg.hidden, cfg.sigma, unroll, cfg.dtype, hoisted, cfg.cell, cfg.gru_reset)
    return ConciseRNNLM(vocab_size, cfg.hidden, unroll, cfg.dtype, cfg.cell)


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
