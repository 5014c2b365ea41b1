"""The cells of the last decade, as the pure functions `cells.CELLS` registers: minGRU and minLSTM (Feng et
al. 2024), the LRU (Orvieto et al. 2023: complex diagonal, its state `(Re h, Im h)` and a real readout), the
RG-LRU (De et al. 2024, Griffin: input-gated diagonal, with Hawk's gated output) and the sLSTM (Beck et al.
2024, xLSTM: exponential gates, the state `(h, c, n, m)`, block-diagonal recurrent weights over heads and a
per-head normalisation of its output). A cell's output (what the next layer or the head reads) may differ
from its state's h; what its layer needs beyond the recurrence (a readout, a normalisation) is inside its
step. All but the sLSTM are linear in their state, so their `sequence` forms compute every step at once by
an associative scan (`diagonal_scan`; the LRU's of complex pairs).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import Array, lax

from jaxrnn.state import CellParams, State, dot, zeros_h


def mingru_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """minGRU (Feng et al. 2024, "Were RNNs All We Needed?"): z = sigmoid(x W_z + b_z), h~ = x W_h + b_h,
    h' = (1 - z) h + z h~. Neither gate reads h, so the loop needs no matmul (see `mingru_parallel`)."""
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


def mingru_parallel(p: CellParams, h0: Array, xw_TxBx2H: Array, unroll: int = 1) -> tuple[Array, Array]:
    """All of minGRU's states at once: h_t = a_t h_{t-1} + b_t with a = 1 - z, b = z h~ (`diagonal_scan`)."""
    x_z, cand = jnp.split(xw_TxBx2H, 2, axis=-1)
    hs_TxBxH = diagonal_scan(jax.nn.sigmoid(-x_z), jax.nn.sigmoid(x_z) * cand, h0)
    return hs_TxBxH[-1], hs_TxBxH


def minlstm_gates(xw: Array) -> tuple[Array, Array, Array]:
    """minLSTM's normalised gates and candidate from xw = [x W_f, x W_i, x W_h] (+ biases): f' = f / (f + i),
    i' = i / (f + i) with f = sigmoid(x_f), i = sigmoid(x_i), as sigmoid(+-d), d = log f - log i: exact
    where either gate saturates."""
    x_f, x_i, cand = jnp.split(xw, 3, axis=-1)
    d = jax.nn.softplus(-x_i) - jax.nn.softplus(-x_f)
    return jax.nn.sigmoid(d), jax.nn.sigmoid(-d), cand


def minlstm_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """minLSTM (Feng et al. 2024): h' = f' h + i' h~ with the gates normalised to sum to 1 (`minlstm_gates`);
    no gate reads h, so the recurrence is linear in it (`minlstm_parallel`)."""
    f, i, cand = minlstm_gates(xw)
    h = f * h + i * cand
    return h, h


def minlstm_parallel(p: CellParams, h0: Array, xw_TxBx3H: Array, unroll: int = 1) -> tuple[Array, Array]:
    f, i, cand = minlstm_gates(xw_TxBx3H)
    hs_TxBxH = diagonal_scan(f, i * cand, h0)
    return hs_TxBxH[-1], hs_TxBxH


def lru_lambda(p: CellParams) -> tuple[Array, Array, Array]:
    """The LRU's diagonal lambda = exp(-exp(nu) + i exp(theta)) as (Re, Im) and its input normalisation
    gamma = sqrt(1 - |lambda|^2)."""
    nu, phase = jnp.exp(p["nu_log"]), jnp.exp(p["theta_log"])
    r = jnp.exp(-nu)
    return r * jnp.cos(phase), r * jnp.sin(phase), jnp.sqrt(-jnp.expm1(-2 * nu))


def lru_readout(p: CellParams, h_re: Array, h_im: Array, skip: Array) -> Array:
    """The LRU's real output Re(h C) + D x (C complex, [N, H]; `skip` is x D, the third block of xw)."""
    return dot(h_re, p["C_re"]) - dot(h_im, p["C_im"]) + skip


def lru_step(p: CellParams, state: tuple[Array, Array], xw: Array) -> tuple[tuple[Array, Array], Array]:
    """LRU (Orvieto et al. 2023): h' = lambda h + gamma (x B), complex and diagonal, the state (Re h, Im h);
    the output Re(h' C) + x D. xw = [Re x B, Im x B, x D] (+ biases): the input projection's three blocks."""
    l_re, l_im, gamma = lru_lambda(p)
    u_re, u_im, skip = jnp.split(xw, 3, axis=-1)
    h_re, h_im = state
    h_re, h_im = l_re * h_re - l_im * h_im + gamma * u_re, l_re * h_im + l_im * h_re + gamma * u_im
    return (h_re, h_im), lru_readout(p, h_re, h_im, skip)


def lru_parallel(p: CellParams, state: tuple[Array, Array], xw_TxBx3H: Array, unroll: int = 1
                  ) -> tuple[tuple[Array, Array], Array]:
    """All of the LRU's states at once, by an associative scan of complex products (as (Re, Im) pairs), and
    its readout as one matmul over every step."""
    l_re, l_im, gamma = lru_lambda(p)
    u_re, u_im, skip = jnp.split(xw_TxBx3H, 3, axis=-1)
    h0_re, h0_im = state
    a_re, a_im = jnp.broadcast_to(l_re, u_re.shape), jnp.broadcast_to(l_im, u_re.shape)
    b_re = (gamma * u_re).at[0].add(l_re * h0_re - l_im * h0_im)  # h0 folded into the first step
    b_im = (gamma * u_im).at[0].add(l_re * h0_im + l_im * h0_re)

    def compose(first, second):  # (a1, b1) then (a2, b2): h -> a2 (a1 h + b1) + b2, complex
        (a1r, a1i, b1r, b1i), (a2r, a2i, b2r, b2i) = first, second
        return (a2r * a1r - a2i * a1i, a2r * a1i + a2i * a1r, a2r * b1r - a2i * b1i + b2r, a2r * b1i + a2i * b1r + b2i)

    hs_re, hs_im = lax.associative_scan(compose, (a_re, a_im, b_re, b_im))[2:]
    return (hs_re[-1], hs_im[-1]), lru_readout(p, hs_re, hs_im, skip)


def lru_recurrent(key: Array, hidden: int, sigma: float, r_min: float, r_max: float, max_phase: float
                   ) -> CellParams:
    """The paper's ring initialisation: |lambda|^2 uniform in [r_min^2, r_max^2], its phase uniform in
    [0, max_phase]; C complex normal with variance 1/hidden (the paper's)."""
    k_nu, k_theta, k_re, k_im = jax.random.split(key, 4)
    u1, u2 = (jax.random.uniform(k, (hidden,), minval=1e-7) for k in (k_nu, k_theta))
    nu_log = jnp.log(-0.5 * jnp.log(u1 * (r_max**2 - r_min**2) + r_min**2))
    C_re, C_im = (jax.random.normal(k, (hidden, hidden)) / jnp.sqrt(2 * hidden) for k in (k_re, k_im))
    return {"nu_log": nu_log, "theta_log": jnp.log(max_phase * u2), "C_re": C_re, "C_im": C_im}


def _ring(r_min: float, r_max: float, closed: bool, example: str) -> str | None:
    """Why a ring of radii [r_min, r_max] cannot be drawn: inside [0, 1] (`closed`: the LRU's may touch 0 and
    1), or inside (0, 1) (the RG-LRU's, a logit of each)."""
    ok, op = (0 <= r_min < r_max <= 1, "<=") if closed else (0 < r_min < r_max < 1, "<")
    return None if ok else (f"the ring needs 0 {op} r_min < r_max {op} 1, got r_min {r_min}, r_max {r_max}; pass "
                            f"e.g. {example}")


def lru_check(hidden: int, r_min: float, r_max: float, max_phase: float) -> str | None:
    bad_phase = None if max_phase > 0 else f"max_phase {max_phase} must be above 0; pass e.g. max_phase=6.28"
    return _ring(r_min, r_max, True, "r_min=0.4,r_max=0.99") or bad_phase


RG_LRU_C = 8.0  # Griffin's constant c in a_t = sigma(Lambda)^(c r_t)


@jax.custom_jvp
def bounded_sqrt(x: Array) -> Array:
    """sqrt whose derivative is capped at 1000 (Griffin's, where 1 - a_t^2 nears 0)."""
    return jnp.sqrt(x)


@bounded_sqrt.defjvp
def bounded_sqrt_jvp(primals: tuple[Array], tangents: tuple[Array]) -> tuple[Array, Array]:
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    return y, dx / jnp.maximum(2 * y, 1e-3)


def rglru_terms(p: CellParams, xw: Array) -> tuple[Array, Array, Array]:
    """RG-LRU's a_t, its scaled input sqrt(1 - a_t^2) (i_t x_t) and the output gate gelu(x W_g) from
    xw = [x W_a, x W_x, x W_v, x W_g] (+ biases): log a_t = c r_t log sigma(Lambda), r_t and i_t sigmoids."""
    x_a, x_i, value, x_g = jnp.split(xw, 4, axis=-1)
    log_a = -RG_LRU_C * jax.nn.sigmoid(x_a) * jax.nn.softplus(-p["Lambda"])
    a = jnp.exp(log_a)
    return a, bounded_sqrt(-jnp.expm1(2 * log_a)) * (jax.nn.sigmoid(x_i) * value), jax.nn.gelu(x_g)


def rglru_step(p: CellParams, h: Array, xw: Array) -> tuple[Array, Array]:
    """RG-LRU (De et al. 2024, Griffin's recurrence): h' = a_t h + sqrt(1 - a_t^2) (i_t x_t), input-gated and
    diagonal; the output is Hawk's gated branch gelu(x W_g) * h' (the next layer or the head projects it)."""
    a, b, gate = rglru_terms(p, xw)
    h = a * h + b
    return h, gate * h


def rglru_parallel(p: CellParams, h0: Array, xw_TxBx4H: Array, unroll: int = 1) -> tuple[Array, Array]:
    a, b, gate = rglru_terms(p, xw_TxBx4H)
    hs_TxBxH = diagonal_scan(a, b, h0)
    return hs_TxBxH[-1], gate * hs_TxBxH


def rglru_recurrent(key: Array, hidden: int, sigma: float, r_min: float, r_max: float) -> CellParams:
    """Lambda such that sigma(Lambda), a_t at r_t = 1/c, is uniform in [r_min, r_max] squared (Griffin's)."""
    a = jnp.sqrt(jax.random.uniform(key, (hidden,), minval=r_min**2, maxval=r_max**2))
    return {"Lambda": jnp.log(a) - jnp.log1p(-a)}  # the logit of a


def rglru_check(hidden: int, r_min: float, r_max: float) -> str | None:
    return _ring(r_min, r_max, False, "r_min=0.9,r_max=0.999")


def slstm_recurrent_matmul(R_KxDx4D: Array, h_BxH: Array) -> Array:
    """h times the block-diagonal recurrent weight, one [D, 4D] block per head, as the gates [B, 4H] (each
    gate's H columns head by head, as xw's)."""
    K, D, _ = R_KxDx4D.shape
    g_BxKx4D = jnp.einsum("bkd,kde->bke", h_BxH.reshape(-1, K, D), R_KxDx4D.astype(h_BxH.dtype))
    return g_BxKx4D.reshape(-1, K, 4, D).transpose(0, 2, 1, 3).reshape(-1, 4 * K * D)


def slstm_step(p: CellParams, state: tuple[Array, ...], xw: Array) -> tuple[tuple[Array, ...], Array]:
    """sLSTM (Beck et al. 2024, xLSTM): exponential input and forget gates, kept in range by the stabiliser m,
    with the normaliser n; the recurrent weights block-diagonal over heads. The state is (h, c, n, m); the
    output is h normalised within each head and scaled (the block's group norm)."""
    h, c, n, m = state
    i_, f_, z_, o_ = jnp.split(xw + slstm_recurrent_matmul(p["R"], h), 4, axis=-1)
    m_new = jnp.maximum(f_ + m, i_)  # log f = f_ (an exponential forget gate)
    i, f = jnp.exp(i_ - m_new), jnp.exp(f_ + m - m_new)
    c, n = f * c + i * jnp.tanh(z_), f * n + i
    h = jax.nn.sigmoid(o_) * c / n
    K = p["R"].shape[0]
    heads = h.reshape(*h.shape[:-1], K, -1)
    mean, var = heads.mean(-1, keepdims=True), heads.var(-1, keepdims=True)
    out = ((heads - mean) * lax.rsqrt(var + 1e-6)).reshape(h.shape) * p["norm"]
    return (h, c, n, m_new), out


def slstm_recurrent(key: Array, hidden: int, sigma: float, heads: int) -> CellParams:
    """R [heads, H / heads, 4 H / heads] normal(sigma), the group norm's scale ones."""
    d = hidden // heads
    return {"R": sigma * jax.random.normal(key, (heads, d, 4 * d)), "norm": jnp.ones(hidden)}


def slstm_check(hidden: int, heads: int) -> str | None:
    if heads < 1 or hidden % heads:
        return f"heads {heads} must divide --hidden {hidden}; pass a divisor, e.g. heads=1"
    return None


def zeros_slstm(batch_size: int, hidden_size: int, dtype: Any = jnp.float32) -> State:
    """sLSTM's initial state (h, c, n, m): zeros (with c and n zero, m only scales both: any start is exact)."""
    h = zeros_h(batch_size, hidden_size, dtype)
    return h, h, h, h
