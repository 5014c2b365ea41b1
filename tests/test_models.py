"""models.py: both language models' shapes, their agreement on shared weights, and a float64 reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.cells import Loop
from jaxrnn.config import Config
from jaxrnn.execution import resolve
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM, build_model, model_config

V, H, B, T = 28, 16, 3, 7


def scratch_params(key: jax.Array, scale: float = 0.5) -> dict:
    """ScratchRNNLM params with weights big enough for a non-linear, non-uniform output."""
    params = ScratchRNNLM(ModelConfig(V, H, sigma=scale)).init(key)
    params["rnn"]["b_h"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (H,))
    params["head"]["b_q"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 2), (V,))
    return params


@pytest.fixture
def tokens(key) -> jax.Array:
    return jax.random.randint(jax.random.fold_in(key, 3), (B, T), 0, V)


@pytest.mark.parametrize("model", [ScratchRNNLM(ModelConfig(V, H)), ConciseRNNLM(ModelConfig(V, H))],
                         ids=["scratch", "concise"])
def test_forward_shapes(model, key, tokens) -> None:
    params = model.init(key)
    logits, state = model.forward(params, tokens, model.init_state(B))
    assert model.init_state(B).shape == (B, H) and not jnp.any(model.init_state(B))
    assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
    assert state.shape == (B, H) and state.dtype == jnp.float32


def test_scratch_init_like_d2l(key) -> None:
    params = ScratchRNNLM(ModelConfig(V, 256, sigma=0.01)).init(key)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"rnn": {"W_xh": (V, 256), "W_hh": (256, 256), "b_h": (256,)},
                      "head": {"W_hq": (256, V), "b_q": (V,)}}
    assert abs(float(jnp.std(params["head"]["W_hq"])) - 0.01) < 0.0005
    assert not jnp.any(params["head"]["b_q"]) and not jnp.any(params["rnn"]["b_h"])


@pytest.mark.parametrize("unroll", [1, T])
def test_same_weights_same_logits(key, tokens, ref, unroll: int) -> None:
    shape = ModelConfig(V, H, Loop(unroll=unroll, run="sequence"))
    scratch, concise = ScratchRNNLM(shape), ConciseRNNLM(shape)
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
        model = ScratchRNNLM(ModelConfig(V, H, Loop(unroll=unroll, run="sequence")))
        got, got_h = model.forward(p, tokens, jnp.asarray(h0))
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got_h, want_h, atol=2e-6)


@pytest.mark.parametrize("kind", ["scratch", "concise"])
def test_state_carries_across_calls(key, tokens, ref, kind: str) -> None:
    p = scratch_params(key)
    shape = ModelConfig(V, H)
    model, params = (ScratchRNNLM(shape), p) if kind == "scratch" else (ConciseRNNLM(shape), ref.as_flax("rnn", p))
    h0 = model.init_state(B)
    with jax.default_matmul_precision("highest"):
        whole, h_whole = model.forward(params, tokens, h0)
        first, h1 = model.forward(params, tokens[:, :3], h0)
        second, h2 = model.forward(params, tokens[:, 3:], h1)
    np.testing.assert_allclose(jnp.concatenate([first, second], axis=1), whole, atol=1e-6)
    np.testing.assert_allclose(h2, h_whole, atol=1e-6)


@pytest.mark.parametrize("kind", ["scratch", pytest.param("concise", marks=pytest.mark.slow)])
def test_bfloat16_compute_is_close_and_params_stay_float32(key, tokens, ref, kind: str) -> None:
    p = scratch_params(key)
    make, params = (ScratchRNNLM, p) if kind == "scratch" else (ConciseRNNLM, ref.as_flax("rnn", p))
    f32, bf16 = make(ModelConfig(V, H, Loop(dtype="float32"))), make(ModelConfig(V, H, Loop(dtype="bfloat16")))
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
    run = "scan" if jax.default_backend() == "cpu" else "sequence"  # small hidden on CPU: autodiff's backward
    assert m == ScratchRNNLM(ModelConfig(28, 12, Loop(unroll=8, run=run), sigma=0.02))  # unroll clipped to 8
    c = build_model(tiny_cfg(model="concise", hidden=12, unroll=4), 30)
    assert isinstance(c, ConciseRNNLM) and c.cfg == model_config(tiny_cfg(model="concise", hidden=12, unroll=4), 30)
    g = build_model(tiny_cfg(cell="gru", gru_reset="before", hidden=12, unroll=4), 30)
    assert isinstance(g, ScratchRNNLM) and g.cfg.loop.cell == "gru-d2l" and g.cfg.loop.unroll == 4
    lstm = build_model(tiny_cfg(cell="lstm", impl="flax", hidden=12, unroll=4, layers=2, dropout=0.1), 30)
    assert lstm == ConciseRNNLM(ModelConfig(30, 12, Loop("lstm", unroll=4), layers=2, dropout=0.1))


def test_the_resolver_takes_the_measured_plans_by_backend_and_size() -> None:
    """(run, unroll) as `execution.resolve` takes them from each cell's measured `best`: the tanh cell GPU
    hoisted/8, CPU autodiff/32 for small hidden (clipped to the window) and hoisted/1 for large; LSTM and
    GRU autodiff, unroll 1 on CPU; minGRU's and the LRU's step loop on CPU, minLSTM's and RG-LRU's parallel
    scan there (and every parallel scan elsewhere); an explicit --unroll wins."""
    def plan(backend: str, **changes) -> tuple[str, int]:  # the scan path's (--kernel auto: tests/test_kernels.py)
        loop = resolve(Config(kernel="scan", **changes), backend)
        return loop.run, loop.unroll
    assert plan("gpu") == ("sequence", 8)
    assert plan("cpu") == ("scan", 32) and plan("cpu", num_steps=16) == ("scan", 16)
    assert plan("cpu", hidden=256) == ("sequence", 1)
    assert plan("cpu", cell="lstm") == plan("cpu", cell="gru") == plan("cpu", cell="gru-d2l") == ("scan", 1)
    assert plan("cpu", cell="mingru") == ("scan", 1) and plan("gpu", cell="mingru")[0] == "sequence"
    assert plan("cpu", cell="lru") == ("scan", 1) and plan("gpu", cell="lru")[0] == "sequence"
    for cell in ("minlstm", "rglru"):  # their parallel scans measured faster on CPUs too
        assert plan("cpu", cell=cell) == plan("gpu", cell=cell) == ("sequence", 1)
    assert plan("cpu", cell="slstm") == plan("gpu", cell="slstm") == ("scan", 1)
    assert plan("cpu", cell="lstm", unroll=4) == ("scan", 4)