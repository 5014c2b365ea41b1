"""Pallas kernels for layers too wide for one program: a kernel per time step, over a grid of batch blocks
times blocks of W_hh's columns, so every program holds only its columns' share of the weights.

`kernels.matmul_layer` walks a layer's whole time loop in one kernel, one program per batch block, each
holding all of W_hh on chip; past `kernels.MAX_WEIGHT_BYTES` that no longer compiles (a 1024-wide LSTM's
W_hh is 16 MiB). Here the time loop is a `lax.fori_loop` of one kernel per step instead of the several
XLA kernels a scan step takes: program (i, j) multiplies its rows of h_{t-1} by its columns of every
gate's block of W_hh (chunk by chunk along the inner dimension) and applies the cell's `update` to those
columns: the matmul and the gate math fused. The backward kernel of step t, for the same block, first
finishes dh_t's columns (the direct part the step after left, plus dg_{t+1} W_hh^T over all of dg's
columns), then takes the step's gradient through `update` (`jax.vjp`) and writes its columns of dg_t,
dxw_t and the direct part for the step before. dW_hh is one matmul after the loop, as everywhere.

Every buffer is a whole [T(+1), B, ...] array handed from step to step and written in place
(`input_output_aliases`); step t's index comes in as a one-element array. The functions take and return
what `kernels.matmul_layer`'s forward and backward do (`PER_STEP`). The GRU in d2l's form multiplies
r * h by W_hn, which needs every column of r, so it has no per-step kernels.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.experimental import pallas as pl

from jaxrnn import kernels
from jaxrnn.kernels import upcast
from jaxrnn.state import compute_dtype, hidden, matmul, with_hidden

# Not yet measured on a GPU (tools/kernel_sweep.py sweeps them): every row block reads its columns of W_hh
# each step, so rows are many (W_hh read B / ROWS times a step) and columns few (H / COLS programs a block).
ROWS = 64  # batch rows one program takes
COLS = 16  # W_hh's columns (of each gate) one forward program computes
BACK_COLS = 32  # dh's columns one backward program computes (each reads all of dg's row block: G times h's)
CHUNK = 64  # the inner dimension's slice per matmul
STAGES = 1  # Triton's software pipelining of the chunk loop (1: none, as the whole-loop kernels)


def takes(hidden: int) -> bool:
    """Whether the blocks divide a layer of this width (every power of two does)."""
    return all(hidden % min(n, hidden) == 0 for n in (COLS, BACK_COLS, CHUNK))


def _shape(W_hh: Array, xw_TxBxGH: Array, G: int, cols: int) -> tuple[int, int, int, int, int, int]:
    """(T, B, H, b: rows a program, c: its columns, the inner chunk); B is a multiple of `ROWS`."""
    (T, B, _), H = xw_TxBxGH.shape, W_hh.shape[0]
    assert W_hh.shape[1] == G * H, "per-step kernels cover all of W_hh's gate blocks (no W_rest)"
    assert takes(H), f"hidden {H} is not a multiple of the per-step kernels' blocks"
    return T, B, H, ROWS, min(cols, H), min(CHUNK, H)


def _groups(refs: tuple, *sizes: int) -> list[tuple]:
    """`refs` cut into consecutive groups of these sizes."""
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    return [refs[end - size:end] for size, end in zip(sizes, ends)]


def _gate_products(x_at: Any, w_ref: Any, b: int, k: int, acc: Any) -> list[Array]:
    """For each gate g, the sum over inner chunks ks of x_at(g, ks) @ w[g, ks], [b, c]: `w_ref` holds
    [G, H, c] (the program's columns of every gate's block), `x_at(g, ks)` reads gate g's rows' [b, k]
    chunk ks."""
    G, H, c = w_ref.shape

    def chunk(i: Array, sums: tuple) -> tuple:
        ks = pl.ds(i * k, k)
        return tuple(s + matmul(x_at(g, ks), w_ref[g, ks, :], acc) for g, s in enumerate(sums))

    return list(lax.fori_loop(0, H // k, chunk, tuple(jnp.zeros((b, c), acc) for _ in range(G))))


def _index(t: Array) -> Array:
    return jnp.full((1,), t, jnp.int32)


def forward(update: Any, G: int, W_hh: Array, others: dict[str, Array], state: Any, xw_TxBxGH: Array
            ) -> tuple[Any, Array]:
    """(every state [T, B, H] (a pair for the LSTM), every g = h_{t-1} W_hh [T, B, G, H]), a kernel a step.
    The states' buffers are [T+1, B, H], the start state first: step t reads row t and writes row t+1."""
    T, B, H, b, c, inner = _shape(W_hh, xw_TxBxGH, G, COLS)
    dtype, acc = xw_TxBxGH.dtype, compute_dtype(xw_TxBxGH.dtype)
    leaves, tree = jax.tree.flatten(state)
    names, k = sorted(others), len(leaves)

    def kernel(t_ref, w_ref, *refs) -> None:
        o_refs, (x_ref,), s_refs, _, so_refs, (g_ref,) = _groups(refs, len(names), 1, k, 1, k, 1)
        t, cols = t_ref[0], pl.ds(pl.program_id(1) * c, c)
        gs = [s.astype(dtype) for s in _gate_products(lambda g, ks: s_refs[0][t, :, ks], w_ref, b, inner, acc)]
        s = jax.tree.unflatten(tree, [r[t, :, cols] for r in s_refs])
        o = {m: r[...].astype(acc) for m, r in zip(names, o_refs)}
        s, _ = update(o, upcast(s, acc), tuple(x_ref[t, :, j, :].astype(acc) for j in range(G)), upcast(tuple(gs), acc))
        for r, v in zip(so_refs, jax.tree.leaves(s)):
            r[t + 1, :, cols] = v.astype(dtype)
        for j, g in enumerate(gs):
            g_ref[t, :, j, :] = g

    # The states' block is the program's rows, every column, shared by the row's column programs, each
    # storing only its columns: right with Triton's direct stores, not with a lowering that copies whole
    # output blocks back (Mosaic GPU, TPUs). So is the backward's dg block.
    rows = pl.BlockSpec((T + 1, b, H), lambda i, j: (0, i, 0))
    cut = pl.BlockSpec((T, b, G, c), lambda i, j: (0, i, 0, j))  # its rows and columns of every gate
    step = kernels.call(
        kernel, "matmul_step_fwd", (B // b, H // c), STAGES,
        out_shape=[jax.ShapeDtypeStruct((T + 1, B, H), dtype)] * k + [jax.ShapeDtypeStruct((T, B, G, H), dtype)],
        in_specs=[pl.BlockSpec((1,), lambda i, j: (0,)), pl.BlockSpec((G, H, c), lambda i, j: (0, 0, j)),
                  *[pl.BlockSpec((c,), lambda i, j: (j,))] * len(names), cut, *[rows] * k, cut],
        out_specs=[*[rows] * k, cut], input_output_aliases={3 + len(names) + n: n for n in range(k + 1)})
    weights = [kernels.by_gate(W_hh, G), *[others[m] for m in names], xw_TxBxGH.reshape(T, B, G, H)]
    bufs = [jnp.zeros((T + 1, B, H), dtype).at[0].set(s.astype(dtype)) for s in leaves]
    bufs = lax.fori_loop(0, T, lambda t, bufs: tuple(step(_index(t), *weights, *bufs)),
                         (*bufs, jnp.zeros((T, B, G, H), dtype)))
    return jax.tree.unflatten(tree, [s[1:] for s in bufs[:k]]), bufs[k]


def backward(update: Any, G: int, W_hh: Array, others: dict[str, Array], before: Any, xw_TxBxGH: Array,
             g_TxBxGxH: Array, dhs_TxBxH: Array, d_last: Any) -> tuple[Array, Array, Any, dict[str, Array]]:
    """(dxw [T, B, G*H], dg [T, B, G*H], the start state's cotangent, the cotangent of `others`), a kernel a
    step from t = T-1 down to 0. Carried from step to step: dg [T+1, B, G, H] (row T zero), the part of
    the state's cotangent that does not pass through W_hh, and each block's sum of the `others`' one."""
    T, B, H, b, c, inner = _shape(W_hh, xw_TxBxGH, G, BACK_COLS)
    dtype, acc = xw_TxBxGH.dtype, compute_dtype(xw_TxBxGH.dtype)
    before_leaves, tree = jax.tree.flatten(before)
    names, k, blocks = sorted(others), len(before_leaves), B // b
    n = len(names)

    def kernel(t_ref, wt_ref, *refs) -> None:
        o_refs, (x_ref, g_ref, dh_ref), p_refs, (dgi_ref,), ci_refs, oi_refs, _, (dg_ref, dx_ref), co_refs, do_refs = \
            _groups(refs, n, 3, k, 1, k, n, 1, 2, k, n)
        t, cols = t_ref[0], pl.ds(pl.program_id(1) * c, c)
        back = sum(_gate_products(lambda g, ks: dgi_ref[t + 1, :, g, ks], wt_ref, b, inner, acc))  # dg_{t+1} W_hh^T
        ds = jax.tree.unflatten(tree, [r[...] for r in ci_refs])
        ds = with_hidden(ds, hidden(ds) + back + dh_ref[t].astype(acc))
        s_prev = jax.tree.unflatten(tree, [r[t].astype(acc) for r in p_refs])
        o = {m: r[...].astype(acc) for m, r in zip(names, o_refs)}
        xs, gs = (tuple(r[t, :, j, :].astype(acc) for j in range(G)) for r in (x_ref, g_ref))
        _, vjp = jax.vjp(lambda o_, s_, x_, g_: update(o_, s_, x_, g_)[0], o, s_prev, xs, gs)
        do, ds_prev, dxs, dgs = vjp(ds)
        for j in range(G):
            dg_ref[t, :, j, cols] = dgs[j].astype(dtype)
            dx_ref[t, :, j, :] = dxs[j].astype(dtype)
        for r, v in zip(co_refs, jax.tree.leaves(ds_prev)):
            r[...] = v
        for r_in, r, m in zip(oi_refs, do_refs, names):
            r[...] = r_in[...] + do[m][None]

    cut = pl.BlockSpec((T, b, G, c), lambda i, j: (0, i, 0, j))
    seq, block = pl.BlockSpec((T, b, c), lambda i, j: (0, i, j)), pl.BlockSpec((b, c), lambda i, j: (i, j))
    dg_rows = pl.BlockSpec((T + 1, b, G, H), lambda i, j: (0, i, 0, 0))
    partial = pl.BlockSpec((1, c), lambda i, j: (i, j))  # a sum per batch block
    first = 5 + n + k  # the carried inputs, aliased to the outputs: dg, the cotangents, the sums; then dxw
    step = kernels.call(
        kernel, "matmul_step_bwd", (blocks, H // c), STAGES,
        out_shape=[jax.ShapeDtypeStruct((T + 1, B, G, H), dtype), jax.ShapeDtypeStruct((T, B, G, H), dtype)]
        + [jax.ShapeDtypeStruct((B, H), acc)] * k + [jax.ShapeDtypeStruct((blocks, H), acc)] * n,
        in_specs=[pl.BlockSpec((1,), lambda i, j: (0,)), pl.BlockSpec((G, H, c), lambda i, j: (0, 0, j)),
                  *[pl.BlockSpec((c,), lambda i, j: (j,))] * n, cut, cut, seq, *[seq] * k,
                  dg_rows, *[block] * k, *[partial] * n, cut],
        out_specs=[dg_rows, cut, *[block] * k, *[partial] * n],
        input_output_aliases={first: 0, first + 1 + k + n: 1, **{first + 1 + m: 2 + m for m in range(k + n)}})
    fixed = [kernels.by_gate(W_hh, G).transpose(0, 2, 1), *[others[m] for m in names], xw_TxBxGH.reshape(T, B, G, H),
             g_TxBxGxH, dhs_TxBxH.astype(dtype), *[s.astype(dtype) for s in before_leaves]]
    start = (jnp.zeros((T + 1, B, G, H), dtype), *[d.astype(acc) for d in jax.tree.leaves(d_last)],
             *[jnp.zeros((blocks, H), acc) for _ in names], jnp.zeros((T, B, G, H), dtype))

    def body(i: Array, bufs: tuple) -> tuple:
        out = step(_index(T - 1 - i), *fixed, *bufs)
        return out[0], *out[2:], out[1]

    dg, *carried, dx = lax.fori_loop(0, T, body, start)
    dg = dg[:T].reshape(T, B, G * H)
    direct = jax.tree.unflatten(tree, carried[:k])  # step 0's share; dh0 adds dg_0 W_hh^T
    d_state = with_hidden(direct, hidden(direct) + matmul(dg[0], W_hh.T, acc))
    d_others = {m: d.sum(0).astype(others[m].dtype) for m, d in zip(names, carried[k:])}
    return dx.reshape(T, B, G * H), dg, d_state, d_others


PER_STEP = kernels.LoopKernels(forward, backward, lambda: ROWS)  # for `kernels.matmul_layer`
