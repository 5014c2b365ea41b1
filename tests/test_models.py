"""models.py: both language models' shapes, their agreement on shared weights, and a float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.models import ConciseRNNLM, ScratchRNNLM, build_model, recurrence_plan

V, H, B, T = 28, 16, 3, 7


def scratch_params(key: jax.Array, scale: float = 0.5) -> dict:
    """ScratchRNNLM params with weights big enough for a non-linear, non-uniform output."""
    params = ScratchRNNLM(V, H, sigma=scale).init(key)
    params["rnn"]["b_h"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (H,))
    params["head"]["b_q"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 2), (V,))
    return params


@pytest.fixture
def tokens(key) -> jax.Array:
    return jax.random.randint(jax.random.fold_in(key, 3), (B, T), 0, V)


@pytest.mark.parametrize("model", [ScratchRNNLM(V, H), ConciseRNNLM(V, H)], ids=["scratch", "concise"])
def test_forward_shapes(model, key, tokens) -> None:
    params = model.init(key)
    logits, state = model.forward(params, tokens, model.init_state(B))
    assert model.init_state(B).shape == (B, H) and not jnp.any(model.init_state(B))
    assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
    assert state.shape == (B, H) and state.dtype == jnp.float32


def test_scratch_init_like_d2l(key) -> None:
    params = ScratchRNNLM(V, 256, sigma=0.01).init(key)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"rnn": {"W_xh": (V, 256), "W_hh": (256, 256), "b_h": (256,)},
                      "head": {"W_hq": (256, V), "b_q": (V,)}}
    assert abs(float(jnp.std(params["head"]["W_hq"])) - 0.01) < 0.0005
    assert not jnp.any(params["head"]["b_q"]) and not jnp.any(params["rnn"]["b_h"])


@pytest.mark.parametrize("unroll", [1, T])
def test_same_weights_same_logits(key, tokens, ref, unroll: int) -> None:
    scratch, concise = ScratchRNNLM(V, H, unroll=unroll), ConciseRNNLM(V, H, unroll=unroll)
    p = scratch_params(key)
    q = ref.as_flax("rnn", p)
    assert jax.tree.structure(q) == jax.tree.structure(concise.init(key))
    assert jax.tree.map(jnp.shape, q) == jax.tree.map(jnp.shape, concise.init(key))
    h0 = 0.5 * jax.random.normal(jax.random.fold_in(key, 4), (B, H))
    with jax.default_matmul_precision("highest"):
        want, want_h = scratch.forward(p, tokens, h0)
        got, got_h = concise.forward(q, tokens, h0)
    assert float(jnp.std(want)) > 0.1  # the comparison is not between two near-constant outputs
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(got_h, want_h, atol=1e-5)


@pytest.mark.parametrize("unroll", [1, T])
def test_scratch_matches_float64_numpy(key, tokens, ref, unroll: int) -> None:
    p = scratch_params(key)
    h0 = 0.5 * np.asarray(jax.random.normal(jax.random.fold_in(key, 5), (B, H)))
    want, want_h = ref.lm_forward(ref.flat(p), np.asarray(tokens), h0)
    with jax.default_matmul_precision("highest"):
        got, got_h = ScratchRNNLM(V, H, unroll=unroll).forward(p, tokens, jnp.asarray(h0))
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got_h, want_h, atol=2e-6)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_state_carries_across_calls(key, tokens, ref, kind: str) -> None:
    p = scratch_params(key)
    model, params = (ScratchRNNLM(V, H), p) if kind == "scratch" else (ConciseRNNLM(V, H), ref.as_flax("rnn", p))
    h0 = model.init_state(B)
    with jax.default_matmul_precision("highest"):
        whole, h_whole = model.forward(params, tokens, h0)
        first, h1 = model.forward(params, tokens[:, :3], h0)
        second, h2 = model.forward(params, tokens[:, 3:], h1)
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, atol=1e-6)
    np.testing.assert_allclose(h2, h_whole, atol=1e-6)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_bfloat16_compute_is_close_and_params_stay_float32(key, tokens, ref, kind: str) -> None:
    p = scratch_params(key)
    make, params = (ScratchRNNLM, p) if kind == "scratch" else (ConciseRNNLM, ref.as_flax("rnn", p))
    f32, bf16 = make(V, H, dtype="float32"), make(V, H, dtype="bfloat16")
    h0 = f32.init_state(B)
    with jax.default_matmul_precision("highest"):
        want, want_h = f32.forward(params, tokens, h0)
    got, got_h = bf16.forward(params, tokens, h0)
    assert got.dtype == got_h.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=0.1)  # bfloat16 keeps 8 bits of mantissa
    np.testing.assert_allclose(got_h, want_h, atol=0.05)
    grads = jax.grad(lambda q: bf16.forward(q, tokens, h0)[0].sum())(params)
    assert all(g.dtype == jnp.float32 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


def test_build_model_picks_the_class(tiny_cfg) -> None:
    m = build_model(tiny_cfg(model="scratch", hidden=12, sigma=0.02, unroll=32), 28)
    hoisted = jax.default_backend() != "cpu"  # small hidden on CPU: autodiff's backward (recurrence_plan)
    assert m == ScratchRNNLM(28, 12, 0.02, unroll=8, dtype="float32", hoisted_backward=hoisted)  # clipped
    c = build_model(tiny_cfg(model="concise", hidden=12, unroll=4), 30)
    assert c == ConciseRNNLM(30, 12, unroll=4, dtype="float32")
    g = build_model(tiny_cfg(cell="gru", gru_reset="before", hidden=12, unroll=4), 30)
    assert g == ScratchRNNLM(30, 12, 0.01, 4, "float32", g.hoisted_backward, cell="gru", gru_reset="before")
    lstm = build_model(tiny_cfg(cell="lstm", impl="flax", hidden=12, unroll=4), 30)
    assert lstm == ConciseRNNLM(30, 12, 4, cell="lstm")


def test_recurrence_plan_by_backend_and_size() -> None:
    """The measured choices: GPU hoisted/8; CPU autodiff/32 for small hidden, hoisted/1 for large."""
    assert recurrence_plan(32, "gpu") == (True, 8)
    assert recurrence_plan(32, "cpu") == (False, 32)
    assert recurrence_plan(256, "cpu") == (True, 1)
    assert recurrence_plan(32, "cpu", "lstm") == recurrence_plan(32, "cpu", "gru") == (False, 1)
