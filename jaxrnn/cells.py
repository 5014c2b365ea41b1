"""Recurrent cells as pure functions over a params pytree, one registry entry each (`CELLS`).

`rnn_step` is the chapter's tanh cell as written (one-hot input times `W_xh`). `rnn_unroll` runs any
cell over a sequence of token ids cheaply: `one_hot(x) @ W_xh` is the row gather `W_xh[x]`, done for
every step at once outside the recurrence, so a step is the cell's own work on `xw = x W_xh + b_h`:
for the tanh RNN, LSTM and GRU one [B, H] x [H, G*H] matmul and the gate nonlinearities.

Every cell projects its input with `W_xh [V, G*H]` and `b_h [G*H]`, the G gates side by side, in
PyTorch's and Flax's order (LSTM i, f, g, o; GRU r, z, n); what its step reads besides (`W_hh`, the
GRU's `b_hn`, IndRNN's `u`) is its own. The GRU has two entries: `gru` (Flax's and cuDNN's) applies
the reset gate to `h W_hn + b_hn`; `gru-d2l` is d2l's (`(r * h) W_hn`), which needs a second matmul
per step. The LSTM state is `(h, c)`; the others' is `h`. A cell with options of its own (IndRNN's
init range of `u`) declares them with their defaults in its entry; its `recurrent` takes them.

The cells of the last decade (minGRU, minLSTM, the LRU, the RG-LRU, the sLSTM) are recent_cells.py's
functions, registered here; their steps may output other than their state's h, and the linear ones have a
`sequence` form, an associative scan over time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxrnn import kernels, step_kernels
from jaxrnn.recent_cells import (
    lru_check,
    lru_parallel,
    lru_recurrent,
    lru_step,
    mingru_parallel,
    mingru_step,
    minlstm_parallel,
    minlstm_step,
    rglru_check,
    rglru_parallel,
    rglru_recurrent,
    rglru_step,
    slstm_check,
    slstm_recurrent,
    slstm_step,
    zeros_slstm,
)
from jaxrnn.state import CellParams, State, dot, dW, hidden, recurrent_split, zeros_h, zeros_hc

Step = Callable[[CellParams, State, Array], tuple[State, Array]]  # (params, state, xw) -> (state, h)
Form = Callable[[CellParams, State, Array, int], tuple[State, Array]]  # (params, state, xw, unroll) -> (last, hs)
Options = tuple[tuple[str, float], ...]  # a cell's own options, (name, value) pairs: hashable, for a Loop


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: everything the library, its benchmark and its tests know about it."""

    gates: int  # G: the input projection is [I, G*H]
    step: Step  # one time step, given xw = x W_xh + b_h
    recurrent: Callable[..., CellParams]  # (key, H, sigma, **options) -> what `step` reads besides xw
    # (hidden, backend) -> (run `sequence`?, scan unroll): the fastest measured (docs/benchmarks.md)
    best: Callable[[int, str], tuple[bool, int]]
    state: Callable[..., State] = zeros_h  # (batch, H, dtype) -> its initial state (state.py says its form)
    options: Mapping[str, float] = field(default_factory=dict)  # its own options and their defaults (`recurrent`'s)
    check: Callable[..., str | None] = lambda hidden, **options: None  # why (hidden, options) cannot build it
    flax: str | None = None  # its Flax twin, a flax.linen cell class (--impl flax); None: scratch only
    torch: str | None = None  # the torch.nn module `jaxrnn bench` races it against; None: not raced
    sequence: Form | None = None  # a whole-sequence form with the same results and less work
    kernels: Form | None = None  # the time loop as whole-loop Pallas kernels (kernels.py); None: none
    step_kernels: Form | None = None  # as a Pallas kernel per step (step_kernels.py), for a W_hh too big for one
    # a step that is one matmul g = h W_hh and then this, (params, state, xw's gates, g's gates) -> (state, h):
    # what the Pallas kernels run (greedy decoding's too)
    update: Callable[[CellParams, State, tuple, tuple], tuple[State, Array]] | None = None
    matmul_gates: int | None = None  # the gate blocks of W_hh that matmul covers (None: all; d2l's GRU: 2)

    def form(self, run: str) -> Form | None:
        """Its loop as `Loop.run` names it, other than 'scan' (None: it has no such form)."""
        return {"sequence": self.sequence, "kernels": self.kernels, "step-kernels": self.step_kernels}[run]


RUNS = ("scan", "sequence", "kernels", "step-kernels")  # how a layer's loop can run (`Loop.run`)


@dataclass(frozen=True)
class Loop:
    """How a cell runs over time, as `execution.resolve` decides it: the cell with its options, then the
    execution (unroll, dtype, `run`, `decode`). `unroll` and `run` change a result only by rounding
    (float32: within 1e-5; bfloat16 more), and the speed; `dtype` is the compute precision."""

    cell: str = "rnn"
    unroll: int = 1
    dtype: str = "float32"
    run: str = "scan"  # one of RUNS: a lax.scan of the step, or the cell's form of that name (`Cell.form`)
    decode: str = "scan"  # greedy decoding: 'scan' (the model's step) or 'kernel' (kernels.greedy_decode)
    options: Options = ()  # the cell's options as resolved (none: its defaults)

    def __post_init__(self) -> None:
        if self.run not in RUNS or (self.run != "scan" and self.spec.form(self.run) is None):
            raise ValueError(f"cell {self.cell!r} has no {self.run!r} form")
        if self.decode == "kernel" and self.spec.update is None:
            raise ValueError(f"cell {self.cell!r} has no decoding kernel (it is not a matmul-then-update cell)")

    @property
    def spec(self) -> Cell:
        return CELLS[self.cell]


def _matmul_then(update: Callable, gates: int, matmul_gates: int | None = None) -> Step:
    """A step that is one matmul g = h W_hh (over W_hh's first `matmul_gates` gate blocks), then an update
    of the gates' slices of xw and g (the form `kernels.matmul_layer` runs too; `state.recurrent_split`
    hands the update W_hh's other blocks as `W_rest`)."""
    def step(p: CellParams, state: State, xw: Array) -> tuple[State, Array]:
        W_mm, others = recurrent_split(p, gates, matmul_gates)
        g = hidden(state) @ W_mm
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
    h = (1 - z) * jnp.tanh(x_n + dot(r * h, p["W_rest"])) + z * h
    return h, h


def _matrix(gates: int, extra: tuple[str, ...] = ()) -> Callable[[Array, int, float], CellParams]:
    """The recurrent params of a matmul cell: W_hh [H, gates*H] normal(sigma), and zero biases `extra` [H]."""
    def init(key: Array, hidden: int, sigma: float) -> CellParams:
        W_hh = sigma * jax.random.normal(key, (hidden, gates * hidden))
        return {"W_hh": W_hh, **{k: jnp.zeros(hidden) for k in extra}}
    return init


def _tanh_best(hidden: int, backend: str) -> tuple[bool, int]:
    """On GPUs the hoisted backward with unroll 8; on CPUs autodiff fully unrolled below hidden 128,
    the hoisted backward with no unroll above (docs/benchmarks.md)."""
    if backend != "cpu":
        return True, 8
    return (False, 32) if hidden < 128 else (True, 1)


def _gated_best(hidden: int, backend: str) -> tuple[bool, int]:
    """LSTM and GRU: autodiff (a hoisted backward was slower on CPUs), no unroll on CPUs, 8 elsewhere
    (docs/benchmarks.md)."""
    return False, 1 if backend == "cpu" else 8


def _parallel_best(on_cpu: bool) -> Callable[[int, str], tuple[bool, int]]:
    """A cell linear in its state: on CPUs its parallel scan where that measured faster than the step loop
    at the seed shape and at hidden 256 (`jaxrnn bench --impls jaxrnn-scan jaxrnn-sequence`, docs/benchmarks.md:
    minLSTM's and RG-LRU's), else the loop (minGRU's, the LRU's); elsewhere the parallel scan, meant for
    accelerators (not yet measured on one)."""
    return lambda hidden, backend: (on_cpu or backend != "cpu", 1)


def _indrnn_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """IndRNN (Li et al. 2018): h' = relu(x W + u * h + b), each unit its own recurrent weight `u`."""
    h = jax.nn.relu(xw + p["u"] * h)
    return h, h


def _indrnn_recurrent(key: Array, hidden: int, sigma: float, u_min: float, u_max: float) -> CellParams:
    """u uniform in [u_min, u_max] (the paper's range for short dependencies is [0, 1]; |u| above 1 grows)."""
    return {"u": jax.random.uniform(key, (hidden,), minval=u_min, maxval=u_max)}


def _indrnn_check(hidden: int, u_min: float, u_max: float) -> str | None:
    return f"u_min {u_min} is above u_max {u_max}; pass u_min <= u_max" if u_min > u_max else None


def _matmul_cell(gates: int, update: Callable, recurrent: Callable, best: Callable, matmul_gates: int | None = None,
                 **twins) -> Cell:
    """A cell whose step is one matmul then `update`: its scan step and its Pallas kernels from the update
    (whole-loop kernels, and a kernel per step for a W_hh too big for one program; d2l's GRU has only the
    former)."""
    whole = kernels.tanh_layer if gates == 1 else kernels.matmul_layer(update, gates, matmul_gates)
    per_step = None if matmul_gates else kernels.matmul_layer(update, gates, loop=step_kernels.PER_STEP)
    return Cell(gates, _matmul_then(update, gates, matmul_gates), recurrent, best, kernels=whole,
                step_kernels=per_step, update=update, matmul_gates=matmul_gates, **twins)


CELLS: dict[str, Cell] = {  # config.CELLS names them, in this order
    "rnn": _matmul_cell(1, _tanh_update, _matrix(1), _tanh_best, flax="SimpleCell", torch="RNN",
                        sequence=lambda p, h, xw, unroll: _tanh_last(tanh_recurrence(p["W_hh"], h, xw, unroll))),
    "lstm": _matmul_cell(4, _lstm_update, _matrix(4), _gated_best, state=zeros_hc, flax="OptimizedLSTMCell",
                         torch="LSTM"),
    "gru": _matmul_cell(3, _gru_update, _matrix(3, ("b_hn",)), _gated_best, flax="GRUCell", torch="GRU"),
    # d2l's GRU (`--gru-reset before` names it too): the reset gate before the matmul, (r * h) W_hn
    "gru-d2l": _matmul_cell(3, _gru_d2l_update, _matrix(3), _gated_best, matmul_gates=2),
    "mingru": Cell(2, mingru_step, lambda key, hidden, sigma: {}, _parallel_best(False), sequence=mingru_parallel),
    "indrnn": Cell(1, _indrnn_step, _indrnn_recurrent, lambda hidden, backend: (False, 1),
                   options={"u_min": 0.0, "u_max": 1.0}, check=_indrnn_check),
    "minlstm": Cell(3, minlstm_step, lambda key, hidden, sigma: {}, _parallel_best(True),
                    sequence=minlstm_parallel),
    "lru": Cell(3, lru_step, lru_recurrent, _parallel_best(False), state=zeros_hc, sequence=lru_parallel,
                options={"r_min": 0.0, "r_max": 1.0, "max_phase": 6.28}, check=lru_check),
    "rglru": Cell(4, rglru_step, rglru_recurrent, _parallel_best(True), sequence=rglru_parallel,
                  options={"r_min": 0.9, "r_max": 0.999}, check=rglru_check),
    "slstm": Cell(4, slstm_step, slstm_recurrent, lambda hidden, backend: (False, 1), state=zeros_slstm,
                  options={"heads": 4}, check=slstm_check),
}


def _tanh_last(hs_TxBxH: Array) -> tuple[Array, Array]:
    return hs_TxBxH[-1], hs_TxBxH


def with_defaults(cell: str, options: Options | Mapping[str, float] = ()) -> dict[str, float]:
    """A cell's options: its defaults (`Cell.options`), overridden by these."""
    return {**CELLS[cell].options, **dict(options)}


def cell_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01, cell: str = "rnn",
              options: Options = ()) -> CellParams:
    """Normal(0, sigma) weights and zero biases, as d2l's scratch cells; a cell's own recurrent params as its
    entry makes them, from its options."""
    k_xh, k_hh = jax.random.split(key)
    spec = CELLS[cell]
    width = spec.gates * num_hiddens
    return {"W_xh": sigma * jax.random.normal(k_xh, (num_inputs, width)), "b_h": jnp.zeros(width),
            **spec.recurrent(k_hh, num_hiddens, sigma, **with_defaults(cell, options))}


def rnn_init(key: Array, num_inputs: int, num_hiddens: int, sigma: float = 0.01) -> CellParams:
    """d2l's RNNScratch parameters: the tanh cell of `cell_init`."""
    return cell_init(key, num_inputs, num_hiddens, sigma)


def zero_state(cell: str, batch_size: int, num_hiddens: int, dtype: Any = jnp.float32) -> State:
    """A cell's initial state (its entry's `state`)."""
    return CELLS[cell].state(batch_size, num_hiddens, dtype)


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
    dtype, run as the loop says: a `lax.scan` of the cell's step, or its form of that name."""
    xw_TxBxGH = xw_TxBxGH.astype(loop.dtype)
    state = jax.tree.map(lambda a: a.astype(loop.dtype), state)
    spec = loop.spec
    own = {k: v.astype(loop.dtype) for k, v in params.items() if k not in ("W_xh", "b_h")}  # what the step reads
    if loop.run == "scan":
        return lax.scan(functools.partial(spec.step, own), state, xw_TxBxGH, unroll=loop.unroll)
    return spec.form(loop.run)(own, state, xw_TxBxGH, loop.unroll)


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
    return dW(h_prev_TxBxH, da_TxBxH).astype(W_hh.dtype), dh0_BxH, da_TxBxH


tanh_recurrence.defvjp(_recur_fwd, _recur_bwd)
