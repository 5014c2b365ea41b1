"""cells.py: the scratch tanh RNN against float64 numpy and d2l's shape checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.cells import Loop, rnn_init, rnn_scan, rnn_step, rnn_unroll

V, H, B, T = 28, 16, 4, 9


@pytest.fixture
def params(key) -> dict[str, jax.Array]:
    """Inputs big enough that tanh is far from linear, a contracting W_hh, and a non-zero bias."""
    p = rnn_init(key, V, H, sigma=0.5)
    return {**p, "W_hh": 0.4 * p["W_hh"], "b_h": 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (H,))}


@pytest.fixture
def tokens(key) -> jax.Array:
    return jax.random.randint(jax.random.fold_in(key, 2), (T, B), 0, V)


def test_init_shapes_and_scale(key) -> None:
    p = rnn_init(key, V, 256)
    assert {k: v.shape for k, v in p.items()} == {"W_xh": (V, 256), "W_hh": (256, 256), "b_h": (256,)}
    assert all(v.dtype == jnp.float32 for v in p.values())
    for w in (p["W_xh"], p["W_hh"]):
        assert abs(float(jnp.std(w)) - 0.01) < 0.0005 and abs(float(jnp.mean(w))) < 0.0005
    assert not jnp.any(p["b_h"])
    assert not jnp.allclose(p["W_xh"][:, :H], p["W_hh"][:V, :H])  # independent keys
    big = rnn_init(key, V, 256, sigma=0.5)
    np.testing.assert_allclose(big["W_hh"], 50 * p["W_hh"], rtol=1e-6)


def test_step_matches_numpy(params, key) -> None:
    h = np.asarray(jax.random.normal(jax.random.fold_in(key, 3), (B, H)))
    x = np.asarray(jax.random.normal(jax.random.fold_in(key, 4), (B, V)))
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    want = np.tanh(x @ p["W_xh"] + h @ p["W_hh"] + p["b_h"])
    with jax.default_matmul_precision("highest"):
        got = rnn_step(params, jnp.asarray(h), jnp.asarray(x))
    assert got.shape == (B, H)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_scan_equals_python_loop(params, tokens, key) -> None:
    x = jax.nn.one_hot(tokens, V)
    h0 = 0.5 * jax.random.normal(jax.random.fold_in(key, 5), (B, H))
    with jax.default_matmul_precision("highest"):
        h_last, hs = rnn_scan(params, h0, x)
        h, want = h0, []
        for t in range(T):
            h = rnn_step(params, h, x[t])
            want.append(h)
    np.testing.assert_allclose(hs, jnp.stack(want), atol=1e-6)
    np.testing.assert_allclose(h_last, h, atol=1e-6)


@pytest.mark.parametrize("unroll", [1, 4, T])
def test_unroll_equals_scan_of_one_hot(params, tokens, key, unroll: int) -> None:
    h0 = 0.5 * jax.random.normal(jax.random.fold_in(key, 6), (B, H))
    with jax.default_matmul_precision("highest"):
        want_h, want_hs = rnn_scan(params, h0, jax.nn.one_hot(tokens, V))
        h, hs = rnn_unroll(params, h0, tokens, Loop(unroll=unroll, run="sequence"))
    np.testing.assert_allclose(hs, want_hs, atol=1e-6)
    np.testing.assert_allclose(h, want_h, atol=1e-6)


def test_d2l_shape_checks(key) -> None:
    """d2l 9.5: one_hot(X.T, 28) is (T, B, 28); the RNN gives T outputs of (B, H) and a (B, H) state."""
    X = jnp.ones((B, T), jnp.int32)
    x = jax.nn.one_hot(X.T, 28)
    assert x.shape == (T, B, 28)
    p = rnn_init(key, 28, H)
    h, outputs = rnn_scan(p, jnp.zeros((B, H)), x)
    assert len(outputs) == T  # d2l's check_len
    assert outputs.shape == (T, B, H) and h.shape == (B, H)  # d2l's check_shape
    h2, outputs2 = rnn_unroll(p, jnp.zeros((B, H)), X.T)
    assert outputs2.shape == (T, B, H) and h2.shape == (B, H)


@pytest.mark.parametrize("unroll", [1, 3])
def test_hoisted_backward_equals_autodiff(key, unroll: int) -> None:
    """rnn_unroll's custom VJP (dW_hh as one matmul after the loop) gives autodiff's gradients of
    the chapter's form, for the params, the initial state, and a loss on all states and the last one."""
    k_p, k_t, k_h, k_w = jax.random.split(key, 4)
    p = rnn_init(k_p, 11, 6, sigma=0.4)
    toks_TxB = jax.random.randint(k_t, (7, 5), 0, 11)
    h0 = 0.5 * jax.random.normal(k_h, (5, 6))
    w = jax.random.normal(k_w, (7, 5, 6))

    def loss(fn):
        def f(p, h0):
            h, hs = fn(p, h0)
            return (hs * w).sum() + (h**2).sum()
        return f

    hoisted = loss(lambda p, h0: rnn_unroll(p, h0, toks_TxB, Loop(unroll=unroll, run="sequence")))
    chapter = loss(lambda p, h0: rnn_scan(p, h0, jax.nn.one_hot(toks_TxB, 11)))
    with jax.default_matmul_precision("highest"):  # GPUs default to TF32-like matmuls
        got = jax.grad(hoisted, argnums=(0, 1))(p, h0)
        want = jax.grad(chapter, argnums=(0, 1))(p, h0)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6)
