"""Recurrent cells as pure functions over a params pytree: d2l's tanh RNN, LSTM and GRU.

`rnn_step` is the chapter's tanh cell as written (one-hot input times `W_xh`). `rnn_unroll` runs any
cell over a sequence of token ids cheaply: `one_hot(x) @ W_xh` is the row gather `W_xh[x]`, done for
every step at once outside the recurrence, so each step is one [B, H] x [H, G*H] matmul and the
gate nonlinearities.

Every cell has the same parameters: `W_xh [V, G*H]`, `W_hh [H, G*H]` and `b_h [G*H]`, the G gates'
matrices side by side (one matmul per step, not G), in PyTorch's and Flax's order: LSTM i, f, g, o;
GRU r, z, n. The GRU has two forms. `after` (the default, Flax's and cuDNN's) applies the reset gate
to `h W_hn + b_hn`, so it has a second bias `b_hn [H]`; `before` is d2l's (`(r * h) W_hn`), which
needs a second matmul per step. The LSTM state is `(h, c)`; the others' is `h`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

CellParams = dict[str, Array]  # W_xh [V, G*H], W_hh [H, G*H], b_h [G*H], and the GRU's b_hn [H]
State = Any  # h [B, H], or (h, c) for the LSTM
GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # the cells of config.CELLS


def cell_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01, cell: str = "rnn",
              gru_reset: str = "after") -> CellParams:
    """Normal(0, sigma) weights and zero biases, as d2l's scratch cells."""
    k_xh, k_hh = jax.random.split(key)
    width = GATES[cell] * num_hiddens
    params = {
        "W_xh": sigma * jax.random.normal(k_xh, (num_inputs, width)),
        "W_hh": sigma * jax.random.normal(k_hh, (num_hiddens, width)),
        "b_h": jnp.zeros(width),
    }
    if cell == "gru" and gru_reset == "after":
        params["b_hn"] = jnp.zeros(num_hiddens)
    return params


def rnn_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> CellParams:
    """d2l's RNNScratch parameters: the tanh cell of `cell_init`."""
    return cell_init(key, num_inputs, num_hiddens, sigma)


def zero_state(cell: str, batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> State:
    h = jnp.zeros((batch_size, num_hiddens), dtype)
    return (h, h) if cell == "lstm" else h


def rnn_step(params: CellParams, h_BxH: Array, x_BxV: Array) -> Array:
    """One tanh step: h' = tanh(x W_xh + h W_hh + b_h)."""
    return jnp.tanh(x_BxV @ params["W_xh"] + h_BxH @ params["W_hh"] + params["b_h"])


def rnn_scan(params: CellParams, h_BxH: Array, x_TxBxV: Array) -> tuple[Array, Array]:
    """The chapter's loop over time as a `lax.scan` of `rnn_step`; returns (last h, all h [T, B, H])."""

    def step(h, x):
        h = rnn_step(params, h, x)
        return h, h

    return lax.scan(step, h_BxH, x_TxBxV)


# A step maps (params, state, xw) to (state, h), where xw = x W_xh + b_h was computed beforehand. For
# every cell but d2l's GRU the step is one matmul g = h W_hh (`_matmul_then`) followed by an update
# that uses no weight matrix.

def _hidden(state: State) -> Array:
    return state[0] if isinstance(state, tuple) else state


def _tanh_update(p: CellParams, h: Array, xw: Array, g: Array) -> tuple[Array, Array]:
    h = jnp.tanh(xw + g)
    return h, h


def _lstm_update(p: CellParams, state: tuple[Array, Array], xw: Array, g: Array) -> tuple[tuple[Array, Array], Array]:
    _, c = state
    i, f, cand, o = jnp.split(xw + g, 4, axis=-1)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(cand)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_update(p: CellParams, h: Array, xw: Array, g: Array) -> tuple[Array, Array]:
    """Flax's and cuDNN's GRU: n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))."""
    x_r, x_z, x_n = jnp.split(xw, 3, axis=-1)
    g_r, g_z, g_n = jnp.split(g, 3, axis=-1)
    r, z = jax.nn.sigmoid(x_r + g_r), jax.nn.sigmoid(x_z + g_z)
    h = (1 - z) * jnp.tanh(x_n + r * (g_n + p["b_hn"])) + z * h
    return h, h


UPDATES = {"rnn": _tanh_update, "lstm": _lstm_update, "gru": _gru_update}


def _matmul_then(update: Callable) -> Callable:
    def step(p: CellParams, state: State, xw: Array) -> tuple[State, Array]:
        return update(p, state, xw, _hidden(state) @ p["W_hh"])
    return step


def _gru_d2l_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """d2l's GRU: n = tanh(x W_xn + (r * h) W_hn + b_n)."""
    H = h.shape[-1]
    x_rz, x_n = xw[..., : 2 * H], xw[..., 2 * H:]
    r, z = jnp.split(jax.nn.sigmoid(x_rz + h @ p["W_hh"][:, : 2 * H]), 2, axis=-1)
    h = (1 - z) * jnp.tanh(x_n + (r * h) @ p["W_hh"][:, 2 * H:]) + z * h
    return h, h


def cell_step(cell: str, gru_reset: str = "after") -> Callable[[CellParams, State, Array], tuple[State, Array]]:
    """The step function of a cell: (params, state, xw) -> (state, h)."""
    if cell == "gru" and gru_reset == "before":
        return _gru_d2l_step
    return _matmul_then(UPDATES[cell])


def rnn_unroll(params: CellParams, state: State, tokens_TxB: Array, unroll: int = 1, dtype: str = "float32",
               hoisted_backward: bool = True, cell: str = "rnn", gru_reset: str = "after") -> tuple[State, Array]:
    """Run a cell over one-hot tokens, computed cheaply; returns (last state, all h [T, B, H]).

    `one_hot(x) @ W_xh` is the row gather `W_xh[x]`, done for all steps at once outside the
    recurrence. The gather reads float32 weights, so its gradient (a scatter-add) stays float32,
    which is both exact and fast (bf16 scatter-adds are slow on GPUs)."""
    xw_TxBxGH = params["W_xh"][tokens_TxB] + params["b_h"]
    return recurrence(params, state, xw_TxBxGH, unroll, dtype, hoisted_backward, cell, gru_reset)


def dense_unroll(params: CellParams, state: State, x_TxBxI: Array, unroll: int = 1, dtype: str = "float32",
                 hoisted_backward: bool = True, cell: str = "rnn", gru_reset: str = "after") -> tuple[State, Array]:
    """Run a cell over dense inputs (an embedding, or the states of the layer below); the input
    projection of all steps is one [T*B, I] x [I, G*H] matmul outside the recurrence."""
    xw_TxBxGH = x_TxBxI.astype(dtype) @ params["W_xh"].astype(dtype) + params["b_h"].astype(dtype)
    return recurrence(params, state, xw_TxBxGH, unroll, dtype, hoisted_backward, cell, gru_reset)


def recurrence(params: CellParams, state: State, xw_TxBxGH: Array, unroll: int = 1, dtype: str = "float32",
               hoisted_backward: bool = True, cell: str = "rnn", gru_reset: str = "after") -> tuple[State, Array]:
    """The loop over time, given every step's input projection `xw = x W_xh + b_h`, in `dtype`. The
    tanh cell with `hoisted_backward` takes its gradient from `tanh_recurrence`'s VJP; every other
    case from autodiff."""
    xw_TxBxGH = xw_TxBxGH.astype(dtype)
    state = jax.tree.map(lambda a: a.astype(dtype), state)
    if cell == "rnn" and hoisted_backward:
        hs_TxBxH = tanh_recurrence(params["W_hh"].astype(dtype), state, xw_TxBxGH, unroll)
        return hs_TxBxH[-1], hs_TxBxH
    recurrent = {k: v.astype(dtype) for k, v in params.items() if k in ("W_hh", "b_hn")}
    step = functools.partial(cell_step(cell, gru_reset), recurrent)
    return lax.scan(step, state, xw_TxBxGH, unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tanh_recurrence(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int = 1) -> Array:
    """All states of h_t = tanh(xw_t + h_{t-1} W_hh), as [T, B, H].

    Its gradient is autodiff's, computed with less work inside the loop: the backward scan carries
    only dh (one [B, H] x [H, H] matmul per step), and dW_hh = sum_t h_{t-1}^T da_t is one matmul
    over all steps afterwards instead of T small ones inside the loop."""
    return _recur(W_hh, h0_BxH, xw_TxBxH, unroll)


def _recur(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int) -> Array:
    return lax.scan(functools.partial(cell_step("rnn"), {"W_hh": W_hh}), h0_BxH, xw_TxBxH, unroll=unroll)[1]


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
