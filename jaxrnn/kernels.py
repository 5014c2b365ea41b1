"""Pallas kernels for a layer's whole time loop: the recurrent weights are read once and each step is a
matmul and an update inside one kernel, instead of one XLA while-loop iteration (several kernels) a step.

`pallas_tanh_recurrence(W_hh, h0, xw)` is `cells.tanh_recurrence` as two kernels: the forward walks
time keeping h on chip and writes every h_t; the backward walks time in reverse carrying dh and writes
every da_t (the gradient at tanh's input); dW_hh is then one matmul over all steps, as the scan path
forms it. `matmul_layer(update, gates)` does the same for any cell whose step is one matmul then an
update (the LSTM and both GRU forms), taking each step's gradient through the update with `jax.vjp`
inside the backward kernel. `greedy_decode` runs all of greedy decoding (every layer, the head, the
argmax) as one kernel. The grid splits the batch into blocks of `BLOCK` rows, one program each.

On GPUs they compile with Triton (`shape_problem` says which widths it takes; a W_hh that is not
`on_chip` goes to `step_kernels.py`'s kernel per step); on a CPU there is no Pallas compiler, so they
run in Pallas' interpret mode (the same program, evaluated op by op), which is how the test suite
checks them. H100 figures: docs/benchmarks.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array, lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

from jaxrnn.state import compute_dtype, dW, hidden, matmul, recurrent_split, with_hidden


def interpreted() -> bool:
    return jax.default_backend() == "cpu"


MIN_DIM = 16  # Triton's smallest matmul dimension
BLOCK = 16  # batch rows one program walks, a multiple of MIN_DIM: the fastest of 16, 32 and 64 on an H100
WARPS = 4  # warps per program: the fastest of 2, 4 and 8 at the seed shape over two runs
MAX_WEIGHT_BYTES = 192 * 1024  # the largest W_hh measured to fit in an H100's shared memory (256 KiB did not)


def _weight_bytes(hidden: int, gates: int, dtype: str) -> int:
    """The size of a layer's W_hh, [H, G*H]."""
    return gates * hidden * hidden * jnp.dtype(dtype).itemsize


def on_chip(hidden: int, gates: int = 1, dtype: str = "float32") -> bool:
    """Whether a layer's W_hh fits in one program's shared memory, where the whole-loop kernels hold it
    (docs/benchmarks.md); wider layers run a kernel per time step (`step_kernels.py`)."""
    return _weight_bytes(hidden, gates, dtype) <= MAX_WEIGHT_BYTES


def shape_problem(hidden: int, embed: int = 0, gates: int = 1, dtype: str = "float32", per_step: bool = True
                  ) -> str | None:
    """Why Triton cannot compile the kernels for these widths, or None: its arrays are powers of two, at
    least `MIN_DIM` wide; a layer whose W_hh is not `on_chip` needs a cell with per-step kernels."""
    for flag, n in (("--hidden", hidden), ("--embed", embed)):
        if n and (n < MIN_DIM or n & (n - 1)):
            return f"{flag} {n} is not a power of two of at least {MIN_DIM}"
    if not per_step and not on_chip(hidden, gates, dtype):
        kib = _weight_bytes(hidden, gates, dtype) // 1024
        return (f"W_hh at --hidden {hidden} is {kib} KiB, over the {MAX_WEIGHT_BYTES // 1024} KiB one "
                f"program holds, and this cell has no per-step kernels for wider layers")
    return None


def _batch_padded(run: Callable, state: Any, xw_TxBxN: Array, rows: int | None = None) -> tuple[Any, Array]:
    """`run(state, xw) -> (last state, all h)` on a batch padded with zero rows to a multiple of `rows`
    (`BLOCK`), the results cut back (zero rows get zero cotangents, so the gradients are unchanged)."""
    B, pad = xw_TxBxN.shape[1], -xw_TxBxN.shape[1] % (rows or BLOCK)
    if not pad:
        return run(state, xw_TxBxN)
    last, hs = run(jax.tree.map(lambda s: jnp.pad(s, ((0, pad), (0, 0))), state),
                   jnp.pad(xw_TxBxN, ((0, 0), (0, pad), (0, 0))))
    return jax.tree.map(lambda s: s[:B], last), hs[:, :B]


def call(kernel: Callable, name: str, grid: int | tuple[int, ...], stages: int = 1, **specs) -> Callable:
    """`pl.pallas_call` over `grid` (an int: that many batch blocks): Triton on GPUs (Pallas' other GPU
    lowering, Mosaic GPU, copies whole blocks into shared memory, which a [T, b, H] sequence outgrows),
    with `stages` of software pipelining for its loops (1: none, what the whole-loop kernels need to fit),
    interpret mode on CPUs."""
    params = None if interpreted() else plt.CompilerParams(num_warps=WARPS, num_stages=stages)
    grid = (grid,) if isinstance(grid, int) else grid
    return pl.pallas_call(kernel, grid=grid, interpret=interpreted(), name=name, compiler_params=params, **specs)


def _specs(T: int, b: int, H: int) -> tuple[pl.BlockSpec, pl.BlockSpec]:
    """Program i's rows: (a [b, H] state block, a [T, b, H] sequence block)."""
    return pl.BlockSpec((b, H), lambda i: (i, 0)), pl.BlockSpec((T, b, H), lambda i: (0, i, 0))


def _gated(T: int, b: int, G: int, H: int) -> pl.BlockSpec:
    """Program i's rows of a [T, B, G, H] sequence of G gates."""
    return pl.BlockSpec((T, b, G, H), lambda i: (0, i, 0, 0))


def _forward_kernel(w_ref, h0_ref, xw_ref, hs_ref) -> None:
    """h_t = tanh(xw_t + h_{t-1} W_hh) for t = 0..T-1, h held by the program; math in at least float32."""
    w, acc = w_ref[...], compute_dtype(hs_ref.dtype)

    def step(t: Array, h: Array) -> Array:
        g = matmul(h, w, acc)
        h = jnp.tanh(xw_ref[t].astype(acc) + g).astype(hs_ref.dtype)
        hs_ref[t] = h
        return h

    lax.fori_loop(0, xw_ref.shape[0], step, h0_ref[...])


def _backward_kernel(wt_ref, hs_ref, dhs_ref, da_ref, dh0_ref) -> None:
    """From t = T-1 down to 0: da_t = (g + dh_t) (1 - h_t^2), g <- da_t W_hh^T; dh0 is the last g."""
    wt, T, acc = wt_ref[...], hs_ref.shape[0], compute_dtype(hs_ref.dtype)

    def step(i: Array, g: Array) -> Array:
        t = T - 1 - i
        h = hs_ref[t].astype(acc)
        da = (g + dhs_ref[t].astype(acc)) * (1 - h * h)
        da_ref[t] = da.astype(da_ref.dtype)
        return matmul(da, wt, acc)

    dh0_ref[...] = lax.fori_loop(0, T, step, jnp.zeros(dh0_ref.shape, acc)).astype(dh0_ref.dtype)


def _forward(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array) -> Array:
    (T, B, H), b = xw_TxBxH.shape, BLOCK
    state, sequence = _specs(T, b, H)
    return call(_forward_kernel, "tanh_recurrence_fwd", B // b,
                 out_shape=jax.ShapeDtypeStruct(xw_TxBxH.shape, xw_TxBxH.dtype),
                 in_specs=[_whole(W_hh), state, sequence],
                 out_specs=sequence)(W_hh, h0_BxH.astype(xw_TxBxH.dtype), xw_TxBxH)


def pallas_tanh_recurrence(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array) -> Array:
    """All states of h_t = tanh(xw_t + h_{t-1} W_hh), [T, B, H], in `xw`'s dtype: `cells.tanh_recurrence`
    as Pallas kernels (the forward and the backward each one kernel over the whole time loop)."""
    return _batch_padded(lambda h0, xw: (None, _tanh_loop(W_hh, h0, xw)), h0_BxH, xw_TxBxH)[1]


@jax.custom_vjp
def _tanh_loop(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array) -> Array:
    """`pallas_tanh_recurrence` on a batch of whole blocks."""
    return _forward(W_hh, h0_BxH, xw_TxBxH)


def _fwd(W_hh, h0_BxH, xw_TxBxH):
    hs_TxBxH = _forward(W_hh, h0_BxH, xw_TxBxH)
    return hs_TxBxH, (W_hh, h0_BxH, hs_TxBxH)


def _bwd(res, dhs_TxBxH):
    W_hh, h0_BxH, hs_TxBxH = res
    (T, B, H), b = hs_TxBxH.shape, BLOCK
    state, sequence = _specs(T, b, H)
    da_TxBxH, dh0_BxH = call(
        _backward_kernel, "tanh_recurrence_bwd", B // b,
        out_shape=(jax.ShapeDtypeStruct(hs_TxBxH.shape, hs_TxBxH.dtype),
                   jax.ShapeDtypeStruct(h0_BxH.shape, h0_BxH.dtype)),
        in_specs=[_whole(W_hh), sequence, sequence], out_specs=(sequence, state),
    )(W_hh.T, hs_TxBxH, dhs_TxBxH.astype(hs_TxBxH.dtype))
    h_prev_TxBxH = jnp.concatenate([h0_BxH[None].astype(hs_TxBxH.dtype), hs_TxBxH[:-1]])
    return dW(h_prev_TxBxH, da_TxBxH).astype(W_hh.dtype), dh0_BxH, da_TxBxH


_tanh_loop.defvjp(_fwd, _bwd)


def tanh_layer(params: dict[str, Array], h0_BxH: Array, xw_TxBxH: Array, unroll: int = 1) -> tuple[Array, Array]:
    """The tanh cell's `kernel` form for `cells.recurrence`: (last h, all h)."""
    hs_TxBxH = pallas_tanh_recurrence(params["W_hh"], h0_BxH, xw_TxBxH)
    return hs_TxBxH[-1], hs_TxBxH


class LoopKernels(NamedTuple):
    """A layer's time loop as kernels for `matmul_layer`: `forward(update, G, W_hh, others, state, xw) ->
    (every state, every g)`, `backward(update, G, W_hh, others, states before, xw, g, dhs, d_last) ->
    (dxw, dg, d_state, d_others)`, and `rows()`, the batch rows one program takes (read when traced)."""

    forward: Callable
    backward: Callable
    rows: Callable[[], int]


def matmul_layer(update: Callable, gates: int, matmul_gates: int | None = None, loop: LoopKernels | None = None
                 ) -> Callable[..., tuple[Any, Array]]:
    """The time loop of a cell whose step is one matmul g = h W_hh, then `update(others, state, xs, gs)
    -> (state, h)` on the `gates` slices xs of xw and the slices gs of g (the LSTM's and the GRU's;
    `others` holds what else the update reads, the GRU's b_hn), as two Pallas kernels under a custom VJP:
    the forward writes every state and every g; the backward walks time in reverse carrying the state's
    cotangent, takes each step's gradient through `update` (`jax.vjp`, inside the kernel) and writes
    dxw_t and dg_t; dW_hh = sum_t h_{t-1}^T dg_t is one matmul after it, and the gradient of `others` a
    sum over the batch blocks' partial sums. When the matmul covers only the first `matmul_gates` of
    W_hh's gate blocks (d2l's GRU, whose third block multiplies r * h), the update gets the rest as
    `others["W_rest"]` and multiplies by it itself (`dot`). Each gate is its own [b, H] array inside the
    kernels (Triton's arrays are powers of two in size). `loop` replaces the two kernels (`WHOLE`;
    `step_kernels.PER_STEP`, a kernel per step, for layers too wide for one program). Returns
    `layer(params, state, xw, unroll) -> (last state, all h)` for `cells.Cell.kernel`."""
    forward, backward, rows = loop or WHOLE

    @jax.custom_vjp
    def run(W_hh: Array, others: dict[str, Array], state: Any, xw_TxBxGH: Array) -> tuple[Any, Array]:
        states, _ = forward(update, gates, W_hh, others, state, xw_TxBxGH)
        return jax.tree.map(lambda s: s[-1], states), hidden(states)

    def fwd(W_hh, others, state, xw_TxBxGH):
        states, g_TxBxGxH = forward(update, gates, W_hh, others, state, xw_TxBxGH)
        before = jax.tree.map(lambda s0, s: jnp.concatenate([s0[None].astype(s.dtype), s[:-1]]), state, states)
        return (jax.tree.map(lambda s: s[-1], states), hidden(states)), (W_hh, others, state, before, xw_TxBxGH,
                                                                          g_TxBxGxH)

    def bwd(res, cts):
        W_hh, others, state, before, xw_TxBxGH, g_TxBxGxH = res
        d_last, dhs_TxBxH = cts
        dxw, dg, d_state, d_others = backward(update, gates, W_hh, others, before, xw_TxBxGH, g_TxBxGxH, dhs_TxBxH,
                                              d_last)
        d_state = jax.tree.map(lambda d, s: d.astype(s.dtype), d_state, state)
        return dW(hidden(before), dg).astype(W_hh.dtype), d_others, d_state, dxw

    run.defvjp(fwd, bwd)

    def layer(params: dict[str, Array], state: Any, xw_TxBxGH: Array, unroll: int = 1) -> tuple[Any, Array]:
        W_mm, others = recurrent_split(params, gates, matmul_gates)
        return _batch_padded(functools.partial(run, W_mm, others), state, xw_TxBxGH, rows())

    return layer


def _whole(a: Array) -> pl.BlockSpec:
    """All of `a` to every program."""
    return pl.BlockSpec(a.shape, lambda i, n=a.ndim: (0,) * n)


def upcast(tree: Any, acc) -> Any:
    """A pytree of arrays in the kernels' compute dtype (Triton's math functions take float32)."""
    return jax.tree.map(lambda a: a.astype(acc), tree)


def by_gate(W: Array, gates: int) -> Array:
    """[I, G*H] -> [G, I, H]: each gate's block of columns."""
    return W.reshape(W.shape[0], gates, W.shape[1] // gates).transpose(1, 0, 2)


def _matmul_forward(update: Callable, G: int, W_hh: Array, others: dict[str, Array], state: Any, xw_TxBxGH: Array):
    """(every state [T, B, H] (a pair for the LSTM), every g = h_{t-1} W_hh [T, B, Gm, H])."""
    (T, B, _), H = xw_TxBxGH.shape, W_hh.shape[0]
    Gm = W_hh.shape[1] // H  # the matmul's gates
    b, dtype = BLOCK, xw_TxBxGH.dtype
    leaves, tree = jax.tree.flatten(state)
    names = sorted(others)
    n, k = len(names), len(leaves)

    def kernel(*refs) -> None:
        w_ref, o_refs, s0_refs = refs[0], refs[1:1 + n], refs[1 + n:1 + n + k]
        xw_ref, s_refs, g_ref = refs[1 + n + k], refs[2 + n + k:2 + n + 2 * k], refs[2 + n + 2 * k]
        acc = compute_dtype(dtype)
        ws, o = [w_ref[j] for j in range(Gm)], {name: r[...].astype(acc) for name, r in zip(names, o_refs)}

        def step(t: Array, s: tuple) -> tuple:
            s = jax.tree.unflatten(tree, list(s))
            gs = tuple(matmul(hidden(s), w, acc).astype(dtype) for w in ws)
            s, _ = update(o, upcast(s, acc), tuple(xw_ref[t, :, j, :].astype(acc) for j in range(G)), upcast(gs, acc))
            for r, v in zip(s_refs, jax.tree.leaves(s)):
                r[t] = v.astype(r.dtype)
            for j in range(Gm):
                g_ref[t, :, j, :] = gs[j]
            return tuple(v.astype(dtype) for v in jax.tree.leaves(s))

        lax.fori_loop(0, T, step, tuple(r[...] for r in s0_refs))

    (row, seq), seq_x, seq_g = _specs(T, b, H), _gated(T, b, G, H), _gated(T, b, Gm, H)
    weights = [by_gate(W_hh, Gm), *[others[m] for m in names]]
    outs = call(kernel, "matmul_recurrence_fwd", B // b,
                 out_shape=[jax.ShapeDtypeStruct((T, B, H), dtype)] * k + [jax.ShapeDtypeStruct((T, B, Gm, H), dtype)],
                 in_specs=[*map(_whole, weights), *[row] * k, seq_x], out_specs=[*[seq] * k, seq_g],
                 )(*weights, *[s.astype(dtype) for s in leaves], xw_TxBxGH.reshape(T, B, G, H))
    return jax.tree.unflatten(tree, outs[:k]), outs[k]


def _matmul_backward(update: Callable, G: int, W_hh: Array, others: dict[str, Array], before: Any,
                     xw_TxBxGH: Array, g_TxBxGxH: Array, dhs_TxBxH: Array, d_last: Any):
    """(dxw [T, B, G*H], dg [T, B, Gm*H], the start state's cotangent, the cotangent of `others`)."""
    (T, B, GH), H = xw_TxBxGH.shape, W_hh.shape[0]
    Gm = W_hh.shape[1] // H
    b, dtype = BLOCK, xw_TxBxGH.dtype
    before_leaves, tree = jax.tree.flatten(before)
    last_leaves = jax.tree.leaves(d_last)
    names = sorted(others)
    n, k, blocks, acc = len(names), len(before_leaves), B // b, compute_dtype(dtype)

    def kernel(*refs) -> None:
        wt_ref, o_refs = refs[0], refs[1:1 + n]
        p_refs = refs[1 + n:1 + n + k]  # state_{t-1}, each [T, b, H]
        xw_ref, g_ref, dh_ref = refs[1 + n + k], refs[2 + n + k], refs[3 + n + k]
        dl_refs = refs[4 + n + k:4 + n + 2 * k]  # the last state's cotangent
        dxw_ref, dg_ref = refs[4 + n + 2 * k], refs[5 + n + 2 * k]
        ds0_refs, do_refs = refs[6 + n + 2 * k:6 + n + 3 * k], refs[6 + n + 3 * k:]
        wts, o = [wt_ref[j] for j in range(Gm)], {name: r[...].astype(acc) for name, r in zip(names, o_refs)}

        def step(i: Array, carry: tuple) -> tuple:
            ds, d_o = carry
            t = T - 1 - i
            s_prev = jax.tree.unflatten(tree, [r[t].astype(acc) for r in p_refs])
            ds = jax.tree.unflatten(tree, list(ds))
            ds = with_hidden(ds, hidden(ds) + dh_ref[t].astype(acc))
            xs, gs = (tuple(r[t, :, j, :].astype(acc) for j in range(n)) for r, n in ((xw_ref, G), (g_ref, Gm)))
            _, vjp = jax.vjp(lambda o_, s_, x_, g_: update(o_, s_, x_, g_)[0], o, s_prev, xs, gs)
            do, ds_prev, dxs, dgs = vjp(ds)
            back = jnp.zeros(hidden(ds_prev).shape, acc)
            for j in range(G):
                dxw_ref[t, :, j, :] = dxs[j].astype(dxw_ref.dtype)
            for j in range(Gm):
                dg_ref[t, :, j, :] = dgs[j].astype(dg_ref.dtype)
                back += matmul(dgs[j], wts[j], acc)
            ds_prev = with_hidden(ds_prev, hidden(ds_prev) + back)
            return tuple(jax.tree.leaves(ds_prev)), tuple(a + do[m] for a, m in zip(d_o, names))

        start = (tuple(r[...].astype(acc) for r in dl_refs), tuple(jnp.zeros(o[m].shape, acc) for m in names))
        ds0, d_o = lax.fori_loop(0, T, step, start)
        for r, v in zip(ds0_refs, ds0):
            r[...] = v.astype(r.dtype)
        for r, v in zip(do_refs, d_o):
            r[...] = v[None].astype(r.dtype)

    (row, seq), seq_x, seq_g = _specs(T, b, H), _gated(T, b, G, H), _gated(T, b, Gm, H)
    weights = [by_gate(W_hh, Gm).transpose(0, 2, 1), *[others[m] for m in names]]
    partial = [pl.BlockSpec((1, *others[m].shape), lambda i, n=others[m].ndim: (i,) + (0,) * n)  # a sum per block
               for m in names]
    outs = call(kernel, "matmul_recurrence_bwd", blocks,
                 out_shape=[jax.ShapeDtypeStruct((T, B, G, H), dtype), jax.ShapeDtypeStruct((T, B, Gm, H), dtype)]
                 + [jax.ShapeDtypeStruct((B, H), acc)] * k
                 + [jax.ShapeDtypeStruct((blocks, *others[m].shape), acc) for m in names],
                 in_specs=[*map(_whole, weights), *[seq] * k, seq_x, seq_g, seq, *[row] * k],
                 out_specs=[seq_x, seq_g, *[row] * k, *partial],
                 )(*weights, *before_leaves, xw_TxBxGH.reshape(T, B, G, H), g_TxBxGxH, dhs_TxBxH.astype(dtype),
                   *[d.astype(acc) for d in last_leaves])
    dxw, dg = outs[0].reshape(T, B, GH), outs[1].reshape(T, B, Gm * H)
    d_state = jax.tree.unflatten(tree, outs[2:2 + k])
    d_others = {m: outs[2 + k + j].sum(0).astype(others[m].dtype) for j, m in enumerate(names)}
    return dxw, dg, d_state, d_others


WHOLE = LoopKernels(_matmul_forward, _matmul_backward, lambda: BLOCK)  # the time loop in one kernel each way


def _pow2(n: int, least: int = MIN_DIM) -> int:
    return max(least, 1 << (n - 1).bit_length())


def greedy_decode(update: Callable, gates: int, matmul_gates: int | None, layers: list[dict[str, Array]],
                  embed: Array | None, W_hq: Array, b_q: Array, states: list[Any], tok_B: Array,
                  num_preds: int) -> Array:
    """`num_preds` greedy tokens [B, N] from `tok_B` on, as one Pallas kernel over all steps: each step
    selects the token's input row (a one-hot matmul at full precision: exact), runs every layer's step
    (`update` on the gates' slices, as `matmul_layer`), the head and the argmax on chip, instead of a
    handful of XLA kernels a step. `layers` holds each layer's W_xh, b_h, W_hh and what else `update`
    reads, `embed` the input table (None: one-hot inputs), `states` each layer's state after the
    warm-up; W_hq's dtype is the compute dtype. The vocab is padded to a power of two with logits of
    -inf, the batch to a multiple of `BLOCK` rows."""
    B, V = tok_B.shape[0], b_q.shape[0]
    dtype, H, G = W_hq.dtype, W_hq.shape[0], gates
    b = BLOCK
    Bp, Vp, acc, exact = B + -B % b, _pow2(V), compute_dtype(W_hq.dtype), lax.Precision.HIGHEST
    weights, names, Gm = [] if embed is None else [jnp.pad(embed.astype(dtype), ((0, Vp - V), (0, 0)))], [], 0
    for layer, p in enumerate(layers):
        selected = layer == 0 and embed is None  # W_xh's rows are selected: kept in full precision, as the model
        W_xh = jnp.pad(p["W_xh"], ((0, Vp - V), (0, 0))) if selected else p["W_xh"]
        W_mm, others = recurrent_split(p, gates, matmul_gates)
        Gm = W_mm.shape[1] // H
        names.append(sorted(others))
        weights += [by_gate(W_xh.astype(acc if selected else dtype), G),
                    p["b_h"].astype(acc if selected else dtype).reshape(G, H), by_gate(W_mm.astype(dtype), Gm),
                    *[others[m].astype(dtype) for m in names[-1]]]
    weights += [jnp.pad(W_hq, ((0, 0), (0, Vp - V))),
                jnp.pad(b_q.astype(jnp.float32), (0, Vp - V), constant_values=-jnp.inf)]
    leaves, tree = jax.tree.flatten([jax.tree.map(lambda s: jnp.pad(s.astype(dtype), ((0, Bp - B), (0, 0))), s)
                                     for s in states])

    def kernel(*refs) -> None:
        w_refs, s_refs, tok_ref, out_ref = refs[:len(weights)], refs[len(weights):-2], refs[-2], refs[-1]
        table, i, plan = (None, 0, []) if embed is None else (w_refs[0][...], 1, [])
        for others in names:  # per layer: W_xh's and b_h's gates, W_hh's gates, what else update reads
            wx, bx, wh = ([r[j] for j in range(n)] for r, n in zip(w_refs[i:i + 3], (G, G, Gm)))
            plan.append((wx, bx, wh, {m: w_refs[i + 3 + j][...].astype(acc) for j, m in enumerate(others)}))
            i += 3 + len(others)
        wq, bq = w_refs[-2][...], w_refs[-1][...]

        def step(n: Array, carry: tuple) -> tuple:
            tok, s = carry
            out_ref[n] = tok
            s = jax.tree.unflatten(tree, list(s))
            onehot = (lax.broadcasted_iota(jnp.int32, (b, Vp), 1) == tok[:, None]).astype(acc)
            x = onehot if table is None else jnp.dot(onehot.astype(dtype), table, precision=exact,
                                                     preferred_element_type=acc)
            new = []
            for layer, (wx, bx, wh, o) in enumerate(plan):
                if layer == 0 and table is None:  # (W_xh[tok] + b_h) in full precision, then the compute dtype
                    xs = [(jnp.dot(onehot, w, precision=exact, preferred_element_type=acc) + c).astype(dtype)
                          for w, c in zip(wx, bx)]
                else:
                    xs = [matmul(x, w, acc).astype(dtype).astype(acc) + c.astype(acc) for w, c in zip(wx, bx)]
                gs = [matmul(hidden(s[layer]), w, acc).astype(dtype) for w in wh]
                state, x = update(o, upcast(s[layer], acc), upcast(tuple(xs), acc), upcast(tuple(gs), acc))
                new.append(jax.tree.map(lambda v: v.astype(dtype), state))
            logits = matmul(x, wq, acc) + bq
            return jnp.argmax(logits, axis=-1).astype(jnp.int32), tuple(jax.tree.leaves(new))

        lax.fori_loop(0, num_preds, step, (tok_ref[...], tuple(r[...] for r in s_refs)))

    toks = call(kernel, "greedy_decode", Bp // b, out_shape=jax.ShapeDtypeStruct((num_preds, Bp), jnp.int32),
                 in_specs=[*map(_whole, weights), *[pl.BlockSpec((b, H), lambda i: (i, 0))] * len(leaves),
                           pl.BlockSpec((b,), lambda i: (i,))],
                 out_specs=pl.BlockSpec((num_preds, b), lambda i: (0, i)),
                 )(*weights, *leaves, jnp.pad(tok_B.astype(jnp.int32), (0, Bp - B)))
    return toks[:, :B].T
