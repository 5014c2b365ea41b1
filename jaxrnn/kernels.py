"""Pallas kernels for a layer's whole time loop: the recurrent weights are read once and each step is a
matmul and an update inside one kernel, instead of one XLA while-loop iteration (several kernels) a step.

`pallas_tanh_recurrence(W_hh, h0, xw)` is `cells.tanh_recurrence` as two kernels: the forward walks
time keeping h in registers/shared memory and writes every h_t; the backward walks time in reverse
carrying dh and writes every da_t (the gradient at tanh's input); dW_hh is then one matmul over all
steps, as the scan path forms it. The grid splits the batch into blocks, each walked by one program.

On a CPU there is no Pallas compiler: the kernels run in Pallas' interpret mode (the same program,
evaluated op by op), which is how the test suite checks them. GPU figures: docs/benchmarks.md, once
measured.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.experimental import pallas as pl


def _interpret() -> bool:
    return jax.default_backend() == "cpu"


def _acc(dtype) -> jnp.dtype:
    """The dtype a kernel computes in: float32 for bfloat16 or float32 data, float64 for float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _batch_block(B: int) -> int:
    """Rows of the batch one program walks: the largest power of two up to 64 dividing B (all of it
    when none does)."""
    for b in (64, 32, 16):
        if B % b == 0:
            return b
    return B


def _forward_kernel(w_ref, h0_ref, xw_ref, hs_ref) -> None:
    """h_t = tanh(xw_t + h_{t-1} W_hh) for t = 0..T-1, h held by the program; math in at least float32."""
    w, acc = w_ref[...], _acc(hs_ref.dtype)

    def step(t: Array, h: Array) -> Array:
        g = jnp.dot(h, w, preferred_element_type=acc)
        h = jnp.tanh(xw_ref[t].astype(acc) + g).astype(hs_ref.dtype)
        hs_ref[t] = h
        return h

    lax.fori_loop(0, xw_ref.shape[0], step, h0_ref[...])


def _backward_kernel(wt_ref, hs_ref, dhs_ref, da_ref, dh0_ref) -> None:
    """From t = T-1 down to 0: da_t = (g + dh_t) (1 - h_t^2), g <- da_t W_hh^T; dh0 is the last g."""
    wt, T, acc = wt_ref[...], hs_ref.shape[0], _acc(hs_ref.dtype)

    def step(i: Array, g: Array) -> Array:
        t = T - 1 - i
        h = hs_ref[t].astype(acc)
        da = (g + dhs_ref[t].astype(acc)) * (1 - h * h)
        da_ref[t] = da.astype(da_ref.dtype)
        return jnp.dot(da.astype(wt.dtype), wt, preferred_element_type=acc)

    dh0_ref[...] = lax.fori_loop(0, T, step, jnp.zeros(dh0_ref.shape, acc)).astype(dh0_ref.dtype)


def _specs(T: int, b: int, H: int) -> tuple[pl.BlockSpec, pl.BlockSpec, pl.BlockSpec]:
    """(the weights, whole, to every program; a [b, H] state block; a [T, b, H] sequence block)."""
    return (pl.BlockSpec((H, H), lambda i: (0, 0)), pl.BlockSpec((b, H), lambda i: (i, 0)),
            pl.BlockSpec((T, b, H), lambda i: (0, i, 0)))


def _forward(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array) -> Array:
    (T, B, H), b = xw_TxBxH.shape, _batch_block(xw_TxBxH.shape[1])
    weights, state, sequence = _specs(T, b, H)
    return pl.pallas_call(_forward_kernel, out_shape=jax.ShapeDtypeStruct(xw_TxBxH.shape, xw_TxBxH.dtype),
                          grid=(B // b,), in_specs=[weights, state, sequence], out_specs=sequence,
                          interpret=_interpret(), name="tanh_recurrence_fwd")(W_hh, h0_BxH.astype(xw_TxBxH.dtype),
                                                                              xw_TxBxH)


@jax.custom_vjp
def pallas_tanh_recurrence(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array) -> Array:
    """All states of h_t = tanh(xw_t + h_{t-1} W_hh), [T, B, H], in `xw`'s dtype: `cells.tanh_recurrence`
    as Pallas kernels (the forward and the backward each one kernel over the whole time loop)."""
    return _forward(W_hh, h0_BxH, xw_TxBxH)


def _fwd(W_hh, h0_BxH, xw_TxBxH):
    hs_TxBxH = _forward(W_hh, h0_BxH, xw_TxBxH)
    return hs_TxBxH, (W_hh, h0_BxH, hs_TxBxH)


def _bwd(res, dhs_TxBxH):
    W_hh, h0_BxH, hs_TxBxH = res
    (T, B, H), b = hs_TxBxH.shape, _batch_block(hs_TxBxH.shape[1])
    weights, state, sequence = _specs(T, b, H)
    da_TxBxH, dh0_BxH = pl.pallas_call(
        _backward_kernel, out_shape=(jax.ShapeDtypeStruct(hs_TxBxH.shape, hs_TxBxH.dtype),
                                     jax.ShapeDtypeStruct(h0_BxH.shape, h0_BxH.dtype)),
        grid=(B // b,), in_specs=[weights, sequence, sequence], out_specs=(sequence, state),
        interpret=_interpret(), name="tanh_recurrence_bwd")(W_hh.T, hs_TxBxH, dhs_TxBxH.astype(hs_TxBxH.dtype))
    h_prev_TxBxH = jnp.concatenate([h0_BxH[None].astype(hs_TxBxH.dtype), hs_TxBxH[:-1]])
    dW_hh = jnp.einsum("tbi,tbj->ij", h_prev_TxBxH, da_TxBxH, preferred_element_type=_acc(W_hh.dtype))
    return dW_hh.astype(W_hh.dtype), dh0_BxH, da_TxBxH


pallas_tanh_recurrence.defvjp(_fwd, _bwd)


def tanh_layer(params: dict[str, Array], h0_BxH: Array, xw_TxBxH: Array, unroll: int = 1) -> tuple[Array, Array]:
    """The tanh cell's `kernel` form for `cells.recurrence`: (last h, all h)."""
    hs_TxBxH = pallas_tanh_recurrence(params["W_hh"], h0_BxH, xw_TxBxH)
    return hs_TxBxH[-1], hs_TxBxH

