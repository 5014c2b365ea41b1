"""The scratch tanh RNN as pure functions over a params pytree (d2l's RNNScratch).

`rnn_step` is the chapter's cell as written; `rnn_unroll` is the same recurrence with the one-hot
product done as a row gather and the input projection of every step hoisted out of the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax

RNNParams = dict[str, Array]  # W_xh [V, H], W_hh [H, H], b_h [H]


def rnn_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> RNNParams:
    """Normal(0, sigma) weights and zero bias, as in d2l's RNNScratch."""
    k_xh, k_hh = jax.random.split(key)
    return {
        "W_xh": sigma * jax.random.normal(k_xh, (num_inputs, num_hiddens)),
        "W_hh": sigma * jax.random.normal(k_hh, (num_hiddens, num_hiddens)),
        "b_h": jnp.zeros(num_hiddens),
    }


def rnn_step(params: RNNParams, h_BxH: Array, x_BxV: Array) -> Array:
    """One tanh step: h' = tanh(x W_xh + h W_hh + b_h)."""
    return jnp.tanh(x_BxV @ params["W_xh"] + h_BxH @ params["W_hh"] + params["b_h"])


def rnn_scan(params: RNNParams, h_BxH: Array, x_TxBxV: Array) -> tuple[Array, Array]:
    """The chapter's loop over time as a `lax.scan` of `rnn_step`; returns (last h, all h [T, B, H])."""

    def step(h, x):
        h = rnn_step(params, h, x)
        return h, h

    return lax.scan(step, h_BxH, x_TxBxV)


def rnn_unroll(params: RNNParams, h_BxH: Array, tokens_TxB: Array, unroll: int = 1,
               dtype: str = "float32") -> tuple[Array, Array]:
    """`rnn_scan` on one-hot tokens, computed cheaply: `one_hot(x) @ W_xh` is the row gather `W_xh[x]`,
    done for all steps at once outside the recurrence, so each step is one [B, H] x [H, H] matmul.
    The recurrence runs in `dtype`; the gather reads float32 weights, so its gradient (a scatter-add)
    stays float32, which is both exact and fast (bf16 scatter-adds are slow on GPUs)."""
    xw_TxBxH = (params["W_xh"][tokens_TxB] + params["b_h"]).astype(dtype)
    W_hh = params["W_hh"].astype(dtype)

    def step(h, xw):
        h = jnp.tanh(xw + h @ W_hh)
        return h, h

    return lax.scan(step, h_BxH.astype(dtype), xw_TxBxH, unroll=unroll)
