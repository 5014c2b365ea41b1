"""The scratch tanh RNN as pure functions over a params pytree (d2l's RNNScratch).

`rnn_step` is the chapter's cell as written; `rnn_unroll` is the same recurrence with the one-hot
product done as a row gather and the input projection of every step hoisted out of the loop.
"""

from __future__ import annotations

import functools

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
               dtype: str = "float32", hoisted_backward: bool = True) -> tuple[Array, Array]:
    """`rnn_scan` on one-hot tokens, computed cheaply: `one_hot(x) @ W_xh` is the row gather `W_xh[x]`,
    done for all steps at once outside the recurrence, so each step is one [B, H] x [H, H] matmul.
    The recurrence runs in `dtype`; the gather reads float32 weights, so its gradient (a scatter-add)
    stays float32, which is both exact and fast (bf16 scatter-adds are slow on GPUs). With
    `hoisted_backward` the gradient comes from `tanh_recurrence`'s VJP, else from autodiff."""
    xw_TxBxH = (params["W_xh"][tokens_TxB] + params["b_h"]).astype(dtype)
    recurrence = tanh_recurrence if hoisted_backward else _recur
    hs_TxBxH = recurrence(params["W_hh"].astype(dtype), h_BxH.astype(dtype), xw_TxBxH, unroll)
    return hs_TxBxH[-1], hs_TxBxH


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tanh_recurrence(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int = 1) -> Array:
    """All states of h_t = tanh(xw_t + h_{t-1} W_hh), as [T, B, H].

    Its gradient is autodiff's, computed with less work inside the loop: the backward scan carries
    only dh (one [B, H] x [H, H] matmul per step), and dW_hh = sum_t h_{t-1}^T da_t is one matmul
    over all steps afterwards instead of T small ones inside the loop."""
    return _recur(W_hh, h0_BxH, xw_TxBxH, unroll)


def _recur(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int) -> Array:
    def step(h, xw):
        h = jnp.tanh(xw + h @ W_hh)
        return h, h

    return lax.scan(step, h0_BxH, xw_TxBxH, unroll=unroll)[1]


def _recur_fwd(W_hh, h0_BxH, xw_TxBxH, unroll):
    hs_TxBxH = _recur(W_hh, h0_BxH, xw_TxBxH, unroll)
    return hs_TxBxH, (W_hh, h0_BxH, hs_TxBxH)


def _recur_bwd(unroll, res, dhs_TxBxH):
    W_hh, h0_BxH, hs_TxBxH = res
    W_hhT = W_hh.T

    def step(g_BxH, x):  # g: dL/dh_t arriving from step t+1
        dh_BxH, h_BxH = x
        da_BxH = (g_BxH + dh_BxH) * (1 - h_BxH * h_BxH)  # through tanh
        return da_BxH @ W_hhT, da_BxH

    dh0_BxH, da_TxBxH = lax.scan(step, jnp.zeros_like(h0_BxH), (dhs_TxBxH, hs_TxBxH), reverse=True,
                                 unroll=unroll)
    h_prev_TxBxH = jnp.concatenate([h0_BxH[None], hs_TxBxH[:-1]])
    dW_hh = jnp.einsum("tbi,tbj->ij", h_prev_TxBxH, da_TxBxH, preferred_element_type=jnp.float32)
    return dW_hh.astype(W_hh.dtype), dh0_BxH, da_TxBxH


tanh_recurrence.defvjp(_recur_fwd, _recur_bwd)
