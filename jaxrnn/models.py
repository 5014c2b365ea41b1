"""Language models behind one interface: `forward(params, tokens, state) -> (logits, state)`.

`ScratchRNNLM` is d2l's RNNLMScratch on the pure functions of `cells.py`; `ConciseRNNLM` is d2l's concise
RNNLM: Flax's `nn.SimpleCell` unrolled by `nn.scan`, with an `nn.Dense` head. Both are frozen
dataclasses, so they are hashable and can be closed over by jitted functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import Array

from jaxrnn import cells
from jaxrnn.config import Config

Params = Any  # a pytree of arrays


class LanguageModel(Protocol):
    vocab_size: int
    hidden: int

    def init(self, key: Array) -> Params: ...

    def init_state(self, batch_size: int) -> Array: ...

    def forward(self, params: Params, tokens_BxT: Array, state_BxH: Array) -> tuple[Array, Array]: ...


def _cast(tree: Params, dtype: str) -> Params:
    return jax.tree.map(lambda a: a.astype(dtype), tree)


@dataclass(frozen=True)
class ScratchRNNLM:
    """Tanh RNN from pure functions, plus a linear head `W_hq, b_q` (normal(sigma) init, zero bias)."""

    vocab_size: int
    hidden: int
    sigma: float = 0.01
    unroll: int = 1
    dtype: str = "float32"
    hoisted_backward: bool = True  # see cells.tanh_recurrence

    def init(self, key: Array) -> Params:
        k_rnn, k_out = jax.random.split(key)
        return {
            "rnn": cells.rnn_init(k_rnn, self.vocab_size, self.hidden, self.sigma),
            "head": {
                "W_hq": self.sigma * jax.random.normal(k_out, (self.hidden, self.vocab_size)),
                "b_q": jnp.zeros(self.vocab_size),
            },
        }

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.hidden))

    def forward(self, params: Params, tokens_BxT: Array, state_BxH: Array) -> tuple[Array, Array]:
        h_BxH, hs_TxBxH = cells.rnn_unroll(params["rnn"], state_BxH, tokens_BxT.T, self.unroll, self.dtype,
                                            self.hoisted_backward)
        head = _cast(params["head"], self.dtype)
        logits_TxBxV = hs_TxBxH @ head["W_hq"] + head["b_q"]
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), h_BxH.astype(jnp.float32)


class _ConciseNet(nn.Module):
    """One-hot inputs -> nn.scan(nn.SimpleCell) -> nn.Dense, time-major inside."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"

    @nn.compact
    def __call__(self, tokens_BxT: Array, state_BxH: Array) -> tuple[Array, Array]:
        x_TxBxV = jax.nn.one_hot(tokens_BxT.T, self.vocab_size, dtype=self.dtype)
        scan = nn.scan(
            nn.SimpleCell,
            variable_broadcast="params",
            split_rngs={"params": False},
            in_axes=0,
            out_axes=0,
            unroll=self.unroll,
        )
        h_BxH, hs_TxBxH = scan(features=self.hidden, dtype=self.dtype, name="rnn")(
            state_BxH.astype(self.dtype), x_TxBxV
        )
        logits_TxBxV = nn.Dense(self.vocab_size, dtype=self.dtype, name="head")(hs_TxBxH)
        return logits_TxBxV.transpose(1, 0, 2).astype(jnp.float32), h_BxH.astype(jnp.float32)


@dataclass(frozen=True)
class ConciseRNNLM:
    """d2l's concise RNN: `nn.scan` over `nn.SimpleCell` (Flax's default inits) and an `nn.Dense` head."""

    vocab_size: int
    hidden: int
    unroll: int = 1
    dtype: str = "float32"

    @property
    def net(self) -> _ConciseNet:
        return _ConciseNet(self.vocab_size, self.hidden, self.unroll, self.dtype)

    def init(self, key: Array) -> Params:
        tokens = jnp.zeros((1, 1), jnp.int32)
        return self.net.init(key, tokens, self.init_state(1))["params"]

    def init_state(self, batch_size: int) -> Array:
        return jnp.zeros((batch_size, self.hidden))

    def forward(self, params: Params, tokens_BxT: Array, state_BxH: Array) -> tuple[Array, Array]:
        return self.net.apply({"params": params}, tokens_BxT, state_BxH)


def build_model(cfg: Config, vocab_size: int) -> LanguageModel:
    """The model a config names, tuned for the default backend where the config leaves it open."""
    hoisted, unroll = recurrence_plan(cfg.hidden, jax.default_backend())
    unroll = min(cfg.unroll or unroll, cfg.num_steps)
    if cfg.model == "scratch":
        return ScratchRNNLM(vocab_size, cfg.hidden, cfg.sigma, unroll, cfg.dtype, hoisted)
    return ConciseRNNLM(vocab_size, cfg.hidden, unroll, cfg.dtype)


def recurrence_plan(hidden: int, backend: str) -> tuple[bool, int]:
    """(hoisted backward?, scan unroll), the fastest measured (docs/benchmarks.md): on GPUs the
    hoisted backward of `cells.tanh_recurrence` with unroll 8 (1.2-1.4x over autodiff); on CPUs,
    for small hidden sizes autodiff's backward fully unrolled, for large ones the hoisted backward
    with no unroll (about 10% either way)."""
    if backend != "cpu":
        return True, 8
    return (False, 32) if hidden < 128 else (True, 1)
