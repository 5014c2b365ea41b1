"""Pallas kernels for a layer's whole time loop: the recurrent weights are read once and each step is a
matmul and an update inside one kernel, instead of one XLA while-loop iteration (several kernels) a step.

`pallas_tanh_recurrence(W_hh, h0, xw)` is `cells.tanh_recurrence` as two kernels: the forward walks
time keeping h in registers/shared memory and writes every h_t; the backward walks time in reverse
carrying dh and writes every da_t (the gradient at tanh's input); dW_hh is then one matmul over all
steps, as the scan path forms it. `matmul_layer(update)` does the same for any cell whose step is one
matmul then an update (the LSTM and the GRU), taking each step's gradient through the update with
`jax.vjp` inside the backward kernel. The grid splits the batch into blocks, each walked by one program.

On a CPU there is no Pallas compiler: the kernels run in Pallas' interpret mode (the same program,
evaluated op by op), which is how the test suite checks them. GPU figures: docs/benchmarks.md, once
measured.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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



def matmul_layer(update: Callable) -> Callable[..., tuple[Any, Array]]:
    """The time loop of a cell whose step is g = h W_hh then `update(others, state, xw, g) -> (state, h)`
    (the LSTM's and the GRU's; `others` holds what else the update reads, the GRU's b_hn), as two Pallas
    kernels under a custom VJP: the forward writes every state and every g; the backward walks time in
    reverse carrying the state's cotangent, takes each step's gradient through `update` (`jax.vjp`,
    inside the kernel) and writes dxw_t and dg_t; dW_hh = sum_t h_{t-1}^T dg_t is one matmul after it,
    and the gradient of `others` a sum over the batch blocks' partial sums. Returns
    `layer(params, state, xw, unroll) -> (last state, all h)` for `cells.Cell.kernel`."""

    @jax.custom_vjp
    def loop(W_hh: Array, others: dict[str, Array], state: Any, xw_TxBxGH: Array) -> tuple[Any, Array]:
        states, _ = _matmul_forward(update, W_hh, others, state, xw_TxBxGH)
        return jax.tree.map(lambda s: s[-1], states), hidden(states)

    def fwd(W_hh, others, state, xw_TxBxGH):
        states, g_TxBxGH = _matmul_forward(update, W_hh, others, state, xw_TxBxGH)
        before = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None].astype(s.dtype), s[:-1]]), state, states)
        return (jax.tree.map(lambda s: s[-1], states), hidden(states)), (W_hh, others, state, before, xw_TxBxGH,
                                                                          g_TxBxGH)

    def bwd(res, cts):
        W_hh, others, state, before, xw_TxBxGH, g_TxBxGH = res
        d_last, dhs_TxBxH = cts
        dxw, dg, d_state, d_others = _matmul_backward(update, W_hh, others, before, xw_TxBxGH, g_TxBxGH, dhs_TxBxH,
                                                      d_last)
        dW_hh = jnp.einsum("tbi,tbj->ij", hidden(before), dg, preferred_element_type=_acc(W_hh.dtype))
        d_state = jax.tree.map(lambda d, s: d.astype(s.dtype), d_state, state)
        return dW_hh.astype(W_hh.dtype), d_others, d_state, dxw

    loop.defvjp(fwd, bwd)

    def layer(params: dict[str, Array], state: Any, xw_TxBxGH: Array, unroll: int = 1) -> tuple[Any, Array]:
        others = {k: v for k, v in params.items() if k != "W_hh"}
        return loop(params["W_hh"], others, state, xw_TxBxGH)

    return layer


def hidden(state: Any) -> Array:
    """h of a cell's state (h, or the LSTM's pair (h, c))."""
    return state[0] if isinstance(state, tuple) else state


def _withhidden(state: Any, h: Array) -> Any:
    return (h, *state[1:]) if isinstance(state, tuple) else h


def _matmul_forward(update: Callable, W_hh: Array, others: dict[str, Array], state: Any, xw_TxBxGH: Array):
    """(every state [T, B, H] (a pair for the LSTM), every g = h_{t-1} W_hh [T, B, G*H])."""
    (T, B, GH), H = xw_TxBxGH.shape, W_hh.shape[0]
    b, dtype = _batch_block(B), xw_TxBxGH.dtype
    leaves, tree = jax.tree.flatten(state)
    names = sorted(others)
    n, k = len(names), len(leaves)

    def kernel(*refs) -> None:
        w_ref, o_refs, s0_refs = refs[0], refs[1:1 + n], refs[1 + n:1 + n + k]
        xw_ref, s_refs, g_ref = refs[1 + n + k], refs[2 + n + k:2 + n + 2 * k], refs[2 + n + 2 * k]
        w, o, acc = w_ref[...], {name: r[...] for name, r in zip(names, o_refs)}, _acc(dtype)

        def step(t: Array, s: tuple) -> tuple:
            s = jax.tree.unflatten(tree, list(s))
            g = jnp.dot(hidden(s), w, preferred_element_type=acc).astype(dtype)
            s, _ = update(o, s, xw_ref[t], g)
            for r, v in zip(s_refs, jax.tree.leaves(s)):
                r[t] = v.astype(r.dtype)
            g_ref[t] = g
            return tuple(jax.tree.leaves(s))

        lax.fori_loop(0, T, step, tuple(r[...] for r in s0_refs))

    row = pl.BlockSpec((b, H), lambda i: (i, 0))
    seq, seq_g = pl.BlockSpec((T, b, H), lambda i: (0, i, 0)), pl.BlockSpec((T, b, GH), lambda i: (0, i, 0))
    whole = [pl.BlockSpec(W_hh.shape, lambda i: (0, 0))] + [pl.BlockSpec(others[m].shape, lambda i: (0,))
                                                            for m in names]
    outs = pl.pallas_call(
        kernel, out_shape=[jax.ShapeDtypeStruct((T, B, H), dtype)] * k + [jax.ShapeDtypeStruct((T, B, GH), dtype)],
        grid=(B // b,), in_specs=[*whole, *[row] * k, seq_g], out_specs=[*[seq] * k, seq_g],
        interpret=_interpret(), name="matmul_recurrence_fwd",
    )(W_hh, *[others[m] for m in names], *[s.astype(dtype) for s in leaves], xw_TxBxGH)
    return jax.tree.unflatten(tree, outs[:k]), outs[k]


def _matmul_backward(update: Callable, W_hh: Array, others: dict[str, Array], before: Any, xw_TxBxGH: Array,
                     g_TxBxGH: Array, dhs_TxBxH: Array, d_last: Any):
    """(dxw [T, B, G*H], dg [T, B, G*H], the start state's cotangent, the cotangent of `others`)."""
    (T, B, GH), H = xw_TxBxGH.shape, W_hh.shape[0]
    b, dtype = _batch_block(B), xw_TxBxGH.dtype
    before_leaves, tree = jax.tree.flatten(before)
    last_leaves = jax.tree.leaves(d_last)
    names = sorted(others)
    n, k, blocks, acc = len(names), len(before_leaves), B // b, _acc(dtype)

    def kernel(*refs) -> None:
        wt_ref, o_refs = refs[0], refs[1:1 + n]
        p_refs = refs[1 + n:1 + n + k]  # state_{t-1}, each [T, b, H]
        xw_ref, g_ref, dh_ref = refs[1 + n + k], refs[2 + n + k], refs[3 + n + k]
        dl_refs = refs[4 + n + k:4 + n + 2 * k]  # the last state's cotangent
        dxw_ref, dg_ref = refs[4 + n + 2 * k], refs[5 + n + 2 * k]
        ds0_refs, do_refs = refs[6 + n + 2 * k:6 + n + 3 * k], refs[6 + n + 3 * k:]
        wt, o = wt_ref[...], {name: r[...] for name, r in zip(names, o_refs)}

        def step(i: Array, carry: tuple) -> tuple:
            ds, d_o = carry
            t = T - 1 - i
            s_prev = jax.tree.unflatten(tree, [r[t] for r in p_refs])
            ds = jax.tree.unflatten(tree, [d.astype(dtype) for d in ds])
            ds = _withhidden(ds, hidden(ds) + dh_ref[t])
            _, vjp = jax.vjp(lambda o_, s_, x_, g_: update(o_, s_, x_, g_)[0], o, s_prev, xw_ref[t], g_ref[t])
            do, ds_prev, dxw, dg = vjp(ds)
            dxw_ref[t], dg_ref[t] = dxw.astype(dxw_ref.dtype), dg.astype(dg_ref.dtype)
            back = jnp.dot(dg, wt, preferred_element_type=acc)
            ds_prev = _withhidden(ds_prev, hidden(ds_prev).astype(acc) + back)
            d_o = tuple(a + do[m].astype(acc) for a, m in zip(d_o, names))
            return tuple(d.astype(acc) for d in jax.tree.leaves(ds_prev)), d_o

        start = (tuple(r[...].astype(acc) for r in dl_refs), tuple(jnp.zeros(o[m].shape, acc) for m in names))
        ds0, d_o = lax.fori_loop(0, T, step, start)
        for r, v in zip(ds0_refs, ds0):
            r[...] = v.astype(r.dtype)
        for r, v in zip(do_refs, d_o):
            r[...] = v[None].astype(r.dtype)

    row = pl.BlockSpec((b, H), lambda i: (i, 0))
    seq, seq_g = pl.BlockSpec((T, b, H), lambda i: (0, i, 0)), pl.BlockSpec((T, b, GH), lambda i: (0, i, 0))
    whole = [pl.BlockSpec((GH, H), lambda i: (0, 0))] + [pl.BlockSpec(others[m].shape, lambda i: (0,))
                                                         for m in names]
    partial = [pl.BlockSpec((1, *others[m].shape), lambda i: (i, 0)) for m in names]  # one sum per batch block
    outs = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct((T, B, GH), dtype)] * 2 + [jax.ShapeDtypeStruct((B, H), acc)] * k
        + [jax.ShapeDtypeStruct((blocks, *others[m].shape), acc) for m in names],
        grid=(blocks,), in_specs=[*whole, *[seq] * k, seq_g, seq_g, seq, *[row] * k],
        out_specs=[seq_g, seq_g, *[row] * k, *partial], interpret=_interpret(), name="matmul_recurrence_bwd",
    )(W_hh.T, *[others[m] for m in names], *before_leaves, xw_TxBxGH, g_TxBxGH, dhs_TxBxH.astype(dtype),
      *[d.astype(acc) for d in last_leaves])
    dxw, dg = outs[0], outs[1]
    d_state = jax.tree.unflatten(tree, outs[2:2 + k])
    d_others = {m: outs[2 + k + j].sum(0).astype(others[m].dtype) for j, m in enumerate(names)}
    return dxw, dg, d_state, d_others
