"""Recurrent cells as pure functions over a params pytree, one registry entry each (`CELLS`).

`rnn_step` is the chapter's tanh cell as written (one-hot input times `W_xh`). `rnn_unroll` runs any
cell over a sequence of token ids cheaply: `one_hot(x) @ W_xh` is the row gather `W_xh[x]`, done for
every step at once outside the recurrence, so a step is the cell's own work on `xw = x W_xh + b_h`:
for the tanh RNN, LSTM and GRU one [B, H] x [H, G*H] matmul and the gate nonlinearities.

Every cell projects its input with `W_xh [V, G*H]` and `b_h [G*H]`, the G gates side by side, in
PyTorch's and Flax's order (LSTM i, f, g, o; GRU r, z, n); what its step reads besides (`W_hh`, the
GRU's `b_hn`) is its own. The GRU has two forms. `after` (the default, Flax's and cuDNN's) applies
the reset gate to `h W_hn + b_hn`; `before` is d2l's (`(r * h) W_hn`), which needs a second matmul
per step. The LSTM state is `(h, c)`; the others' is `h`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxrnn import kernels, step_kernels

CellParams = dict[str, Array]  # W_xh [V, G*H], b_h [G*H], and what the step reads: W_hh [H, G*H], ...
State = Any  # h [B, H], or (h, c) for the LSTM
Step = Callable[[CellParams, State, Array], tuple[State, Array]]  # (params, state, xw) -> (state, h)


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: everything the library, its benchmark and its tests know about it."""

    gates: int  # G: the input projection is [I, G*H]
    step: Step  # one time step, given xw = x W_xh + b_h
    recurrent: Callable[[Array, int, float], CellParams]  # (key, H, sigma) -> what `step` reads besides xw
    # (hidden, backend) -> (use `fast`?, scan unroll): the fastest measured (docs/benchmarks.md)
    plan: Callable[[int, str], tuple[bool, int]]
    paired: bool = False  # the state is (h, c), as the LSTM's
    flax: str | None = None  # its Flax twin, a flax.linen cell class (--impl flax); None: scratch only
    torch: str | None = None  # the torch.nn module `jaxrnn bench` races it against; None: not raced
    # a whole-sequence form with the same results and less work, (params, state, xw, unroll) -> (last, hs)
    fast: Callable[[CellParams, State, Array, int], tuple[State, Array]] | None = None
    # the time loop as Pallas kernels (kernels.py), (params, state, xw, unroll) -> (last, hs); None: scan only
    kernel: Callable[[CellParams, State, Array, int], tuple[State, Array]] | None = None
    # a step that is one matmul g = h W_hh and then this, (params, state, xw's gates, g's gates) -> (state, h):
    # what the Pallas kernels run (greedy decoding's too)
    update: Callable[[CellParams, State, tuple, tuple], tuple[State, Array]] | None = None
    matmul_gates: int | None = None  # the gate blocks of W_hh that matmul covers (None: all; d2l's GRU: 2)


@dataclass(frozen=True)
class Loop:
    """How a cell runs over time: the cell and its form, then the execution plan. `unroll`, `fast` and
    `kernel` change a result only by rounding (float32: within 1e-5; bfloat16 more), and the speed;
    `dtype` is the compute precision."""

    cell: str = "rnn"
    gru_reset: str = "after"  # the GRU's form, see the module docstring
    unroll: int = 1
    dtype: str = "float32"
    fast: bool = True  # the cell's `fast` form where it has one
    kernel: str = "scan"  # 'pallas': the cell's Pallas kernels (Cell.kernel)

    @property
    def spec(self) -> Cell:
        return cell_spec(self.cell, self.gru_reset)


def _matmul_then(update: Callable, gates: int, matmul_gates: int | None = None) -> Step:
    """A step that is one matmul g = h W_hh (over W_hh's first `matmul_gates` gate blocks), then an update
    of the gates' slices of xw and g (the form `kernels.matmul_layer` runs too; `kernels.recurrent_split`
    hands the update W_hh's other blocks as `W_rest`)."""
    def step(p: CellParams, state: State, xw: Array) -> tuple[State, Array]:
        W_mm, others = kernels.recurrent_split(p, gates, matmul_gates)
        g = kernels.hidden(state) @ W_mm
        return update(others, state, jnp.split(xw, gates, axis=-1),
                      jnp.split(g, matmul_gates or gates, axis=-1))
    return step


def _tanh_update(p: CellParams, h: Array, xs: tuple[Array], gs: tuple[Array]) -> tuple[Array, Array]:
    h = jnp.tanh(xs[0] + gs[0])
    return h, h


def _lstm_update(p: CellParams, state: tuple[Array, Array], xs: tuple[Array, ...], gs: tuple[Array, ...]
                 ) -> tuple[tuple[Array, Array], Array]:
    _, c = state
    i, f, cand, o = (x + g for x, g in zip(xs, gs))
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(cand)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return (h, c), h


def _gru_update(p: CellParams, h: Array, xs: tuple[Array, ...], gs: tuple[Array, ...]) -> tuple[Array, Array]:
    """Flax's and cuDNN's GRU: n = tanh(x W_xn + b_n + r * (h W_hn + b_hn))."""
    (x_r, x_z, x_n), (g_r, g_z, g_n) = xs, gs
    r, z = jax.nn.sigmoid(x_r + g_r), jax.nn.sigmoid(x_z + g_z)
    h = (1 - z) * jnp.tanh(x_n + r * (g_n + p["b_hn"])) + z * h
    return h, h


def _gru_d2l_update(p: CellParams, h: Array, xs: tuple[Array, ...], gs: tuple[Array, ...]
                    ) -> tuple[Array, Array]:
    """d2l's GRU: n = tanh(x W_xn + (r * h) W_hn + b_n); the step's matmul covers r and z, and W_hn,
    W_hh's last block, comes as `W_rest`."""
    (x_r, x_z, x_n), (g_r, g_z) = xs, gs
    r, z = jax.nn.sigmoid(x_r + g_r), jax.nn.sigmoid(x_z + g_z)
    h = (1 - z) * jnp.tanh(x_n + kernels.dot(r * h, p["W_rest"])) + z * h
    return h, h


def _mingru_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): z = sigmoid(x W_z + b_z), h~ = x W_h + b_h,
    h' = (1 - z) h + z h~. Neither gate reads h, so the loop needs no matmul (see `_mingru_parallel`)."""
    x_z, cand = jnp.split(xw, 2, axis=-1)
    h = jax.nn.sigmoid(-x_z) * h + jax.nn.sigmoid(x_z) * cand  # 1 - z as sigmoid(-x): exact where z is near 1
    return h, h


def _mingru_parallel(p: CellParams, h0: Array, xw_TxBx2H: Array, unroll: int = 1) -> tuple[Array, Array]:
    """All of minGRU's states at once: h_t = a_t h_{t-1} + b_t with a = 1 - z, b = z h~ is a linear
    recurrence, composed in log2(T) parallel rounds by `lax.associative_scan` instead of T steps."""
    x_z, cand = jnp.split(xw_TxBx2H, 2, axis=-1)
    a, b = jax.nn.sigmoid(-x_z), jax.nn.sigmoid(x_z) * cand
    b = b.at[0].add(a[0] * h0)  # h_0 = a_0 h0 + b_0: the initial state folded into the first step

    def compose(first, second):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
        return first[0] * second[0], second[0] * first[1] + second[1]

    hs_TxBxH = lax.associative_scan(compose, (a, b))[1]
    return hs_TxBxH[-1], hs_TxBxH


def _matrix(gates: int, extra: tuple[str, ...] = ()) -> Callable[[Array, int, float], CellParams]:
    """The recurrent params of a matmul cell: W_hh [H, gates*H] normal(sigma), and zero biases `extra` [H]."""
    def init(key: Array, hidden: int, sigma: float) -> CellParams:
        W_hh = sigma * jax.random.normal(key, (hidden, gates * hidden))
        return {"W_hh": W_hh, **{k: jnp.zeros(hidden) for k in extra}}
    return init


def _tanh_plan(hidden: int, backend: str) -> tuple[bool, int]:
    """On GPUs the hoisted backward with unroll 8; on CPUs autodiff fully unrolled below hidden 128,
    the hoisted backward with no unroll above (docs/benchmarks.md)."""
    if backend != "cpu":
        return True, 8
    return (False, 32) if hidden < 128 else (True, 1)


def _gated_plan(hidden: int, backend: str) -> tuple[bool, int]:
    """LSTM and GRU: autodiff (a hoisted backward was slower on CPUs), no unroll on CPUs, 8 elsewhere
    (docs/benchmarks.md)."""
    return False, 1 if backend == "cpu" else 8


def _mingru_plan(hidden: int, backend: str) -> tuple[bool, int]:
    """minGRU: on CPUs the step loop, which measured faster than the parallel scan's log2(T) passes over
    [T, B, H] (docs/benchmarks.md); elsewhere the parallel scan, meant for accelerators (not yet measured)."""
    return backend != "cpu", 1


def _matmul_cell(gates: int, update: Callable, recurrent: Callable, plan: Callable, matmul_gates: int | None = None,
                 **twins) -> Cell:
    """A cell whose step is one matmul then `update`: its scan step and its Pallas kernels from the update
    (the whole-loop kernels where W_hh fits on chip, else a kernel per step; d2l's GRU has only the former)."""
    whole = kernels.tanh_layer if gates == 1 else kernels.matmul_layer(update, gates, matmul_gates)
    per_step = None if matmul_gates else kernels.matmul_layer(update, gates, loop=step_kernels.PER_STEP)

    def kernel(params: CellParams, state: State, xw: Array, unroll: int = 1) -> tuple[State, Array]:
        W = params["W_hh"]
        fits = per_step is None or kernels.on_chip(W.shape[0], gates, W.dtype) or not step_kernels.takes(W.shape[0])
        return (whole if fits else per_step)(params, state, xw, unroll)  # (CPUs interpret whole ones at any width)

    return Cell(gates, _matmul_then(update, gates, matmul_gates), recurrent, plan, kernel=kernel, update=update,
                matmul_gates=matmul_gates, **twins)


CELLS: dict[str, Cell] = {  # config.CELLS names them, in this order
    "rnn": _matmul_cell(1, _tanh_update, _matrix(1), _tanh_plan, flax="SimpleCell", torch="RNN",
                        fast=lambda p, h, xw, unroll: _tanh_last(tanh_recurrence(p["W_hh"], h, xw, unroll))),
    "lstm": _matmul_cell(4, _lstm_update, _matrix(4), _gated_plan, paired=True, flax="OptimizedLSTMCell", torch="LSTM"),
    "gru": _matmul_cell(3, _gru_update, _matrix(3, ("b_hn",)), _gated_plan, flax="GRUCell", torch="GRU"),
    "mingru": Cell(2, _mingru_step, lambda key, hidden, sigma: {}, _mingru_plan, fast=_mingru_parallel),
}
# --gru-reset before: d2l's GRU
GRU_D2L = _matmul_cell(3, _gru_d2l_update, _matrix(3), _gated_plan, matmul_gates=2, torch="GRU")


def cell_spec(cell: str, gru_reset: str = "after") -> Cell:
    """The registry entry of a cell in its form."""
    return GRU_D2L if (cell, gru_reset) == ("gru", "before") else CELLS[cell]


def _tanh_last(hs_TxBxH: Array) -> tuple[Array, Array]:
    return hs_TxBxH[-1], hs_TxBxH


def cell_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01, cell: str = "rnn",
              gru_reset: str = "after") -> CellParams:
    """Normal(0, sigma) weights and zero biases, as d2l's scratch cells."""
    k_xh, k_hh = jax.random.split(key)
    spec = cell_spec(cell, gru_reset)
    width = spec.gates * num_hiddens
    return {"W_xh": sigma * jax.random.normal(k_xh, (num_inputs, width)), "b_h": jnp.zeros(width),
            **spec.recurrent(k_hh, num_hiddens, sigma)}


def rnn_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> CellParams:
    """d2l's RNNScratch parameters: the tanh cell of `cell_init`."""
    return cell_init(key, num_inputs, num_hiddens, sigma)


def zero_state(cell: str, batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> State:
    h = jnp.zeros((batch_size, num_hiddens), dtype)
    return (h, h) if CELLS[cell].paired else h


def rnn_step(params: CellParams, h_BxH: Array, x_BxV: Array) -> Array:
    """One tanh step: h' = tanh(x W_xh + h W_hh + b_h)."""
    return jnp.tanh(x_BxV @ params["W_xh"] + h_BxH @ params["W_hh"] + params["b_h"])


def rnn_scan(params: CellParams, h_BxH: Array, x_TxBxV: Array) -> tuple[Array, Array]:
    """The chapter's loop over time as a `lax.scan` of `rnn_step`; returns (last h, all h [T, B, H])."""

    def step(h, x):
        h = rnn_step(params, h, x)
        return h, h

    return lax.scan(step, h_BxH, x_TxBxV)


def rnn_unroll(params: CellParams, state: State, tokens_TxB: Array, loop: Loop = Loop()) -> tuple[State, Array]:
    """Run a cell over one-hot tokens, computed cheaply; returns (last state, all h [T, B, H]).

    `one_hot(x) @ W_xh` is the row gather `W_xh[x]`, done for all steps at once outside the
    recurrence. The gather reads float32 weights, so its gradient (a scatter-add) stays float32,
    which is both exact and fast (bf16 scatter-adds are slow on GPUs)."""
    return recurrence(params, state, params["W_xh"][tokens_TxB] + params["b_h"], loop)


def dense_unroll(params: CellParams, state: State, x_TxBxI: Array, loop: Loop = Loop()) -> tuple[State, Array]:
    """Run a cell over dense inputs (an embedding, or the states of the layer below); the input
    projection of all steps is one [T*B, I] x [I, G*H] matmul outside the recurrence."""
    dt = loop.dtype
    return recurrence(params, state, x_TxBxI.astype(dt) @ params["W_xh"].astype(dt) + params["b_h"].astype(dt), loop)


def recurrence(params: CellParams, state: State, xw_TxBxGH: Array, loop: Loop = Loop()) -> tuple[State, Array]:
    """The loop over time, given every step's input projection `xw = x W_xh + b_h`, in the loop's
    dtype: the cell's Pallas kernels if the loop asks for them, else its `fast` form if it has one and
    the loop asks for it, else a `lax.scan` of its step."""
    xw_TxBxGH = xw_TxBxGH.astype(loop.dtype)
    state = jax.tree.map(lambda a: a.astype(loop.dtype), state)
    spec = loop.spec
    own = {k: v.astype(loop.dtype) for k, v in params.items() if k not in ("W_xh", "b_h")}  # what the step reads
    if loop.kernel == "pallas":
        return spec.kernel(own, state, xw_TxBxGH, loop.unroll)
    if loop.fast and spec.fast is not None:
        return spec.fast(own, state, xw_TxBxGH, loop.unroll)
    return lax.scan(functools.partial(spec.step, own), state, xw_TxBxGH, unroll=loop.unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def tanh_recurrence(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int = 1) -> Array:
    """All states of h_t = tanh(xw_t + h_{t-1} W_hh), as [T, B, H].

    Its gradient is autodiff's, computed with less work inside the loop: the backward scan carries
    only dh (one [B, H] x [H, H] matmul per step), and dW_hh = sum_t h_{t-1}^T da_t is one matmul
    over all steps afterwards instead of T small ones inside the loop."""
    return _recur(W_hh, h0_BxH, xw_TxBxH, unroll)


def _recur(W_hh: Array, h0_BxH: Array, xw_TxBxH: Array, unroll: int) -> Array:
    return lax.scan(functools.partial(CELLS["rnn"].step, {"W_hh": W_hh}), h0_BxH, xw_TxBxH, unroll=unroll)[1]


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
    return kernels.dW(h_prev_TxBxH, da_TxBxH).astype(W_hh.dtype), dh0_BxH, da_TxBxH


tanh_recurrence.defvjp(_recur_fwd, _recur_bwd)
