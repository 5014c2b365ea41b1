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

The cells of the last decade: minLSTM (Feng et al. 2024), the LRU (Orvieto et al. 2023: complex diagonal,
its state `(Re h, Im h)` and a real readout), the RG-LRU (De et al. 2024, Griffin: input-gated diagonal, with
Hawk's gated output) and the sLSTM (Beck et al. 2024, xLSTM: exponential gates, the state `(h, c, n, m)`,
block-diagonal recurrent weights over heads and a per-head normalisation of its output). A cell's output
(what the next layer or the head reads) may differ from its state's h; what its layer needs beyond the
recurrence (a readout, a normalisation) is inside its step. The first three are linear in their state, so
their `sequence` form computes every step at once by an associative scan (`diagonal_scan`).
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
from jaxrnn.state import State, dot, dW, hidden, recurrent_split, zeros_h, zeros_hc

CellParams = dict[str, Array]  # W_xh [V, G*H], b_h [G*H], and what the step reads: W_hh [H, G*H], ...
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


def _mingru_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): z = sigmoid(x W_z + b_z), h~ = x W_h + b_h,
    h' = (1 - z) h + z h~. Neither gate reads h, so the loop needs no matmul (see `_mingru_parallel`)."""
    x_z, cand = jnp.split(xw, 2, axis=-1)
    h = jax.nn.sigmoid(-x_z) * h + jax.nn.sigmoid(x_z) * cand  # 1 - z as sigmoid(-x): exact where z is near 1
    return h, h


def diagonal_scan(a_TxBxH: Array, b_TxBxH: Array, h0_BxH: Array) -> Array:
    """All states of the linear recurrence h_t = a_t * h_{t-1} + b_t (elementwise), [T, B, H]: composed in
    log2(T) parallel rounds by `lax.associative_scan` instead of T steps."""
    b_TxBxH = b_TxBxH.at[0].add(a_TxBxH[0] * h0_BxH)  # h_0 = a_0 h0 + b_0: the initial state folded in

    def compose(first, second):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2
        return first[0] * second[0], second[0] * first[1] + second[1]

    return lax.associative_scan(compose, (a_TxBxH, b_TxBxH))[1]


def _mingru_parallel(p: CellParams, h0: Array, xw_TxBx2H: Array, unroll: int = 1) -> tuple[Array, Array]:
    """All of minGRU's states at once: h_t = a_t h_{t-1} + b_t with a = 1 - z, b = z h~ (`diagonal_scan`)."""
    x_z, cand = jnp.split(xw_TxBx2H, 2, axis=-1)
    hs_TxBxH = diagonal_scan(jax.nn.sigmoid(-x_z), jax.nn.sigmoid(x_z) * cand, h0)
    return hs_TxBxH[-1], hs_TxBxH


def _minlstm_gates(xw: Array) -> tuple[Array, Array, Array]:
    """minLSTM's normalised gates and candidate from xw = [x W_f, x W_i, x W_h] (+ biases): f' = f / (f + i),
    i' = i / (f + i) with f = sigmoid(x_f), i = sigmoid(x_i), as sigmoid(+-d), d = log f - log i: exact
    where either gate saturates."""
    x_f, x_i, cand = jnp.split(xw, 3, axis=-1)
    d = jax.nn.softplus(-x_i) - jax.nn.softplus(-x_f)
    return jax.nn.sigmoid(d), jax.nn.sigmoid(-d), cand


def _minlstm_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """minLSTM (Feng et al. 2024): h' = f' h + i' h~ with the gates normalised to sum to 1 (`_minlstm_gates`);
    no gate reads h, so the recurrence is linear in it (`_minlstm_parallel`)."""
    f, i, cand = _minlstm_gates(xw)
    h = f * h + i * cand
    return h, h


def _minlstm_parallel(p: CellParams, h0: Array, xw_TxBx3H: Array, unroll: int = 1) -> tuple[Array, Array]:
    f, i, cand = _minlstm_gates(xw_TxBx3H)
    hs_TxBxH = diagonal_scan(f, i * cand, h0)
    return hs_TxBxH[-1], hs_TxBxH


def _lru_lambda(p: CellParams) -> tuple[Array, Array, Array]:
    """The LRU's diagonal lambda = exp(-exp(nu) + i exp(theta)) as (Re, Im) and its input normalisation
    gamma = sqrt(1 - |lambda|^2)."""
    nu, phase = jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])
    r = jnp.exp(-nu)
    return r * jnp.cos(phase), r * jnp.sin(phase), jnp.sqrt(-jnp.expm1(-2 * nu))


def _lru_readout(p: CellParams, h_re: Array, h_im: Array, skip: Array) -> Array:
    """The LRU's real output Re(h C) + D x (C complex, [N, H]; `skip` is x D, the third block of xw)."""
    return dot(h_re, p["C_re"]) - dot(h_im, p["C_im"]) + skip


def _lru_step(p: CellParams, state: tuple[Array, Array], xw: Array) -> tuple[tuple[Array, Array], Array]:
    """LRU (Orvieto et al. 2023): h' = lambda h + gamma (x B), complex and diagonal, the state (Re h, Im h);
    the output Re(h' C) + x D. xw = [Re x B, Im x B, x D] (+ biases): the input projection's three blocks."""
    l_re, l_im, gamma = _lru_lambda(p)
    u_re, u_im, skip = jnp.split(xw, 3, axis=-1)
    h_re, h_im = state
    h_re, h_im = l_re * h_re - l_im * h_im + gamma * u_re, l_re * h_im + l_im * h_re + gamma * u_im
    return (h_re, h_im), _lru_readout(p, h_re, h_im, skip)


def _lru_parallel(p: CellParams, state: tuple[Array, Array], xw_TxBx3H: Array, unroll: int = 1
                  ) -> tuple[tuple[Array, Array], Array]:
    """All of the LRU's states at once, by an associative scan of complex products (as (Re, Im) pairs), and
    its readout as one matmul over every step."""
    l_re, l_im, gamma = _lru_lambda(p)
    u_re, u_im, skip = jnp.split(xw_TxBx3H, 3, axis=-1)
    h0_re, h0_im = state
    a_re, a_im = jnp.broadcast_to(l_re, u_re.shape), jnp.broadcast_to(l_im, u_re.shape)
    b_re = (gamma * u_re).at[0].add(l_re * h0_re - l_im * h0_im)  # h0 folded into the first step
    b_im = (gamma * u_im).at[0].add(l_re * h0_im + l_im * h0_re)

    def compose(first, second):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2, complex
        (a1r, a1i, b1r, b1i), (a2r, a2i, b2r, b2i) = first, second
        return (a2r * a1r - a2i * a1i, a2r * a1i + a2i * a1r, a2r * b1r - a2i * b1i + b2r, a2r * b1i + a2i * b1r + b2i)

    hs_re, hs_im = lax.associative_scan(compose, (a_re, a_im, b_re, b_im))[2:]
    return (hs_re[-1], hs_im[-1]), _lru_readout(p, hs_re, hs_im, skip)


def _lru_recurrent(key: Array, hidden: int, sigma: float, r_min: float, r_max: float, max_phase: float
                   ) -> CellParams:
    """The paper's ring initialisation: |lambda|^2 uniform in [r_min^2, r_max^2], its phase uniform in
    [0, max_phase]; C complex normal with variance 1/hidden (the paper's)."""
    k_nu, k_theta, k_re, k_im = jax.random.split(key, 4)
    u1, u2 = (jax.random.uniform(k, (hidden,), minval=1e-7) for k in (k_nu, k_theta))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    C_re, C_im = (jax.random.normal(k, (hidden, hidden)) / jnp.sqrt(2 * hidden) for k in (k_re, k_im))
    return {"nu_log": nu_log, "theta_log": jnp.log(max_phase * u2), "C_re": C_re, "C_im": C_im}


def _lru_check(hidden: int, r_min: float, r_max: float, max_phase: float) -> str | None:
    if not 0 <= r_min < r_max <= 1:
        return (f"the ring needs 0 <= r_min < r_max <= 1, got r_min {r_min}, r_max {r_max}; pass e.g. "
                "r_min=0.4,r_max=0.99")
    return None if max_phase > 0 else f"max_phase {max_phase} must be above 0; pass e.g. max_phase=6.28"


RG_LRU_C = 8.0  # Griffin's constant c in a_t = sigma(Lambda)^(c r_t)


@jax.custom_jvp
def _bounded_sqrt(x: Array) -> Array:
    """sqrt whose derivative is capped at 1000 (Griffin's, where 1 - a_t^2 nears 0)."""
    return jnp.sqrt(x)


@_bounded_sqrt.defjvp
def _bounded_sqrt_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    return y, dx / jnp.maximum(2 * y, 1e-3)


def _rglru_terms(p: CellParams, xw: Array) -> tuple[Array, Array, Array]:
    """RG-LRU's a_t, its scaled input sqrt(1 - a_t^2) (i_t x_t) and the output gate gelu(x W_g) from
    xw = [x W_a, x W_x, x W_v, x W_g] (+ biases): log a_t = c r_t log sigma(Lambda), r_t and i_t sigmoids."""
    x_a, x_i, value, x_g = jnp.split(xw, 4, axis=-1)
    log_a = -RG_LRU_C * jax.nn.sigmoid(x_a) * jax.nn.softplus(-p["Lambda"])
    a = jnp.exp(log_a)
    return a, _bounded_sqrt(-jnp.expm1(2 * log_a)) * (jax.nn.sigmoid(x_i) * value), jax.nn.gelu(x_g)


def _rglru_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """RG-LRU (De et al. 2024, Griffin's recurrence): h' = a_t h + sqrt(1 - a_t^2) (i_t x_t), input-gated and
    diagonal; the output is Hawk's gated branch gelu(x W_g) * h' (the next layer or the head projects it)."""
    a, b, gate = _rglru_terms(p, xw)
    h = a * h + b
    return h, gate * h


def _rglru_parallel(p: CellParams, h0: Array, xw_TxBx4H: Array, unroll: int = 1) -> tuple[Array, Array]:
    a, b, gate = _rglru_terms(p, xw_TxBx4H)
    hs_TxBxH = diagonal_scan(a, b, h0)
    return hs_TxBxH[-1], gate * hs_TxBxH


def _rglru_recurrent(key: Array, hidden: int, sigma: float, r_min: float, r_max: float) -> CellParams:
    """Lambda such that sigma(Lambda), a_t at r_t = 1/c, is uniform in [r_min, r_max] squared (Griffin's)."""
    a = jnp.sqrt(jax.random.uniform(key, (hidden,), minval=r_min**2, maxval=r_max**2))
    return {"Lambda": jnp.log(a) - jnp.log1p(-a)}  # the logit of a


def _ring_check(hidden: int, r_min: float, r_max: float) -> str | None:
    return None if 0 < r_min < r_max < 1 else (f"the ring needs 0 < r_min < r_max < 1, got r_min {r_min}, "
                                                f"r_max {r_max}; pass e.g. r_min=0.9,r_max=0.999")


def _slstm_recurrent_matmul(R_KxDx4D: Array, h_BxH: Array) -> Array:
    """h times the block-diagonal recurrent weight, one [D, 4D] block per head, as the gates [B, 4H] (each
    gate's H columns head by head, as xw's)."""
    K, D, _ = R_KxDx4D.shape
    g_BxKx4D = jnp.einsum("bkd,kde->bke", h_BxH.reshape(-1, K, D), R_KxDx4D.astype(h_BxH.dtype))
    return g_BxKx4D.reshape(-1, K, 4, D).transpose(0, 2, 1, 3).reshape(-1, 4 * K * D)


def _slstm_step(p: CellParams, state: tuple[Array, ...], xw: Array) -> tuple[tuple[Array, ...], Array]:
    """sLSTM (Beck et al. 2024, xLSTM): exponential input and forget gates, kept in range by the stabiliser m,
    with the normaliser n; the recurrent weights block-diagonal over heads. The state is (h, c, n, m); the
    output is h normalised within each head and scaled (the block's group norm)."""
    h, c, n, m = state
    i_, f_, z_, o_ = jnp.split(xw + _slstm_recurrent_matmul(p["R"], h), 4, axis=-1)
    m_new = jnp.maximum(f_ + m, i_)  # log f = f_ (an exponential forget gate)
    i, f = jnp.exp(i_ - m_new), jnp.exp(f_ + m - m_new)
    c, n = f * c + i * jnp.tanh(z_), f * n + i
    h = jax.nn.sigmoid(o_) * c / n
    K = p["R"].shape[0]
    heads = h.reshape(*h.shape[:-1], K, -1)
    mean, var = heads.mean(-1, keepdims=True), heads.var(-1, keepdims=True)
    out = ((heads - mean) * lax.rsqrt(var + 1e-6)).reshape(h.shape) * p["norm"]
    return (h, c, n, m_new), out


def _slstm_recurrent(key: Array, hidden: int, sigma: float, heads: int) -> CellParams:
    """R [heads, H / heads, 4 H / heads] normal(sigma), the group norm's scale ones."""
    d = hidden // heads
    return {"R": sigma * jax.random.normal(key, (heads, d, 4 * d)), "norm": jnp.ones(hidden)}


def _slstm_check(hidden: int, heads: int) -> str | None:
    if heads < 1 or hidden % heads:
        return f"heads {heads} must divide --hidden {hidden}; pass a divisor, e.g. heads=1"
    return None


def zeros_slstm(batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> State:
    """sLSTM's initial state (h, c, n, m): zeros (with c and n zero, m only scales both: any start is exact)."""
    h = zeros_h(batch_size, hidden_size, dtype)
    return h, h, h, h


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
    "mingru": Cell(2, _mingru_step, lambda key, hidden, sigma: {}, _parallel_best(False), sequence=_mingru_parallel),
    "indrnn": Cell(1, _indrnn_step, _indrnn_recurrent, lambda hidden, backend: (False, 1),
                   options={"u_min": 0.0, "u_max": 1.0}, check=_indrnn_check),
    "minlstm": Cell(3, _minlstm_step, lambda key, hidden, sigma: {}, _parallel_best(True),
                    sequence=_minlstm_parallel),
    "lru": Cell(3, _lru_step, _lru_recurrent, _parallel_best(False), state=zeros_hc, sequence=_lru_parallel,
                options={"r_min": 0.0, "r_max": 1.0, "max_phase": 6.28}, check=_lru_check),
    "rglru": Cell(4, _rglru_step, _rglru_recurrent, _parallel_best(True), sequence=_rglru_parallel,
                  options={"r_min": 0.9, "r_max": 0.999}, check=_ring_check),
    "slstm": Cell(4, _slstm_step, _slstm_recurrent, lambda hidden, backend: (False, 1), state=zeros_slstm,
                  options={"heads": 4}, check=_slstm_check),
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
