"""kernels.py's Pallas kernels, in interpret mode on CPU: against the scan path, the float64 reference,
finite differences, in bfloat16, and through a training run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.cells import Loop, rnn_init, rnn_unroll
from jaxrnn.errors import ConfigError
from jaxrnn.models import build_model

V, H = 11, 16


def problem(key: jax.Array, B: int, T: int, dtype=jnp.float32):
    """Weights big enough that tanh is far from linear, a random start state and tokens."""
    p = {k: v.astype(dtype) for k, v in rnn_init(key, V, H, sigma=0.5).items()}
    h0 = (0.5 * jax.random.normal(jax.random.fold_in(key, 1), (B, H))).astype(dtype)
    tokens = jax.random.randint(jax.random.fold_in(key, 2), (T, B), 0, V)
    return p, h0, tokens


def loss_of(loop: Loop, tokens, w):
    def loss(p, h0):
        h, hs = rnn_unroll(p, h0, tokens, loop)
        return (hs * w).sum() + (h**2).sum()
    return loss


@pytest.mark.parametrize(("B", "T"), [(5, 7), (32, 1), (48, 9)])  # a batch of one block, one step, three blocks
def test_kernels_equal_the_scan_path(key, B: int, T: int) -> None:
    """Forward and gradients (params and start state, for a loss on all states and the last one)."""
    p, h0, tokens = problem(key, B, T)
    w = jax.random.normal(jax.random.fold_in(key, 3), (T, B, H))
    with jax.default_matmul_precision("highest"):
        want_h, want_hs = rnn_unroll(p, h0, tokens, Loop(fast=False))
        got_h, got_hs = rnn_unroll(p, h0, tokens, Loop(kernel="pallas"))
        np.testing.assert_allclose(got_hs, want_hs, atol=1e-6)
        np.testing.assert_allclose(got_h, want_h, atol=1e-6)
        want = jax.grad(loss_of(Loop(fast=False), tokens, w), argnums=(0, 1))(p, h0)
        got = jax.jit(jax.grad(loss_of(Loop(kernel="pallas"), tokens, w), argnums=(0, 1)))(p, h0)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # float32 sums in another order
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6 * float(jnp.abs(w_).max()))


def test_kernels_match_float64_numpy_and_finite_differences(key, ref) -> None:
    with jax.enable_x64(True):
        p, h0, tokens = problem(key, 6, 5, jnp.float64)
        _, want_hs = ref.cell_run("rnn", "after", p, h0, np.eye(V)[np.asarray(tokens)])
        loop = Loop(dtype="float64", kernel="pallas")
        np.testing.assert_allclose(rnn_unroll(p, h0, tokens, loop)[1], want_hs, atol=1e-12)
        w = jax.random.normal(jax.random.fold_in(key, 3), (5, 6, H), jnp.float64)
        loss = jax.jit(loss_of(loop, tokens, w))
        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, h0)
        leaves, tree = jax.tree.flatten((p, h0))
        d = [jax.random.normal(jax.random.fold_in(key, 10 + j), a.shape, jnp.float64) for j, a in enumerate(leaves)]
        eps = 1e-6
        shifted = [jax.tree.unflatten(tree, [a + s * eps * b for a, b in zip(leaves, d)]) for s in (1, -1)]
        fd = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * eps)
        np.testing.assert_allclose(sum((g * b).sum() for g, b in zip(jax.tree.leaves(grads), d)), fd, rtol=1e-7)


def test_bfloat16_kernels_are_close_to_float32(key) -> None:
    p, h0, tokens = problem(key, 16, 6)
    with jax.default_matmul_precision("highest"):
        want = rnn_unroll(p, h0, tokens, Loop(fast=False))[1]
    got = rnn_unroll(p, h0, tokens, Loop(dtype="bfloat16", kernel="pallas"))[1]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05)
    grads = jax.grad(lambda q: rnn_unroll(q, h0, tokens, Loop(dtype="bfloat16", kernel="pallas"))[1]
                     .astype(jnp.float32).sum())(p)
    assert all(g.dtype == jnp.float32 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


def test_a_run_with_pallas_kernels_trains_as_the_scan_path(tiny_cfg, tiny_corpus) -> None:
    """`--kernel pallas` through the whole training program (fused chunks, two devices): the params
    after an epoch equal the scan path's to float32 rounding."""
    with jax.default_matmul_precision("highest"):
        want = jaxrnn.train(tiny_cfg(kernel="scan"), corpus=tiny_corpus, progress=False).params
        got = jaxrnn.train(tiny_cfg(kernel="pallas"), corpus=tiny_corpus, progress=False).params
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes", [dict(cell="lstm"), dict(impl="flax")], ids=["lstm", "flax"])
def test_pallas_is_refused_where_there_is_no_kernel(tiny_cfg, changes: dict) -> None:
    with pytest.raises(ConfigError, match="--kernel pallas runs the scratch cells that have Pallas kernels \\(rnn\\)"):
        build_model(tiny_cfg(kernel="pallas", **changes), V)
