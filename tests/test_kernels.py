"""kernels.py's Pallas kernels for every cell that has them, in interpret mode on CPU: against the scan
path, the float64 reference, finite differences, in bfloat16, and through a training run."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn.cells import CELLS, Loop, cell_init, rnn_unroll
from jaxrnn.errors import ConfigError
from jaxrnn.models import build_model

V, H = 11, 16
KERNEL_CELLS = [name for name, cell in CELLS.items() if cell.kernel]  # rnn, lstm, gru


def problem(key: jax.Array, B: int, T: int, cell: str = "rnn", dtype=jnp.float32):
    """Weights big enough that every gate is far from linear, non-zero biases, a random start state
    (a pair for the LSTM) and tokens."""
    p = {k: (0.4 * jax.random.normal(jax.random.fold_in(key, i), v.shape) if k != "W_xh" else v).astype(dtype)
         for i, (k, v) in enumerate(cell_init(key, V, H, 0.5, cell).items())}
    h, c = ((0.5 * jax.random.normal(jax.random.fold_in(key, 20 + i), (B, H))).astype(dtype) for i in range(2))
    tokens = jax.random.randint(jax.random.fold_in(key, 2), (T, B), 0, V)
    return p, ((h, c) if cell == "lstm" else h), tokens


def loss_of(loop: Loop, tokens, w):
    def loss(p, s0):
        s, hs = rnn_unroll(p, s0, tokens, loop)
        return (hs * w).sum() + sum((a**2).sum() for a in jax.tree.leaves(s))
    return loss


# a batch of one block, one step, three blocks; each cell in three blocks, the gated ones in one too
@pytest.mark.parametrize(("cell", "B", "T"), [("rnn", 5, 7), ("rnn", 32, 1), *[(c, 48, 9) for c in KERNEL_CELLS],
                                              ("lstm", 5, 1), ("gru", 5, 3)])
def test_kernels_equal_the_scan_path(key, cell: str, B: int, T: int) -> None:
    """Forward and gradients (params and start state, for a loss on all states and the last state)."""
    p, s0, tokens = problem(key, B, T, cell)
    w = jax.random.normal(jax.random.fold_in(key, 3), (T, B, H))
    with jax.default_matmul_precision("highest"):
        want_s, want_hs = rnn_unroll(p, s0, tokens, Loop(cell, fast=False))
        got_s, got_hs = rnn_unroll(p, s0, tokens, Loop(cell, kernel="pallas"))
        np.testing.assert_allclose(got_hs, want_hs, atol=1e-6)
        for g, w_ in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s)):
            np.testing.assert_allclose(g, w_, atol=1e-6)
        want = jax.grad(loss_of(Loop(cell, fast=False), tokens, w), argnums=(0, 1))(p, s0)
        got = jax.jit(jax.grad(loss_of(Loop(cell, kernel="pallas"), tokens, w), argnums=(0, 1)))(p, s0)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # float32 sums in another order
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6 * float(jnp.abs(w_).max()))


@pytest.mark.parametrize("cell", KERNEL_CELLS)
def test_kernels_match_float64_numpy_and_finite_differences(key, ref, cell: str) -> None:
    with jax.enable_x64(True):
        p, h0, tokens = problem(key, 6, 5, cell, jnp.float64)
        _, want_hs = ref.cell_run(cell, "after", p, h0, np.eye(V)[np.asarray(tokens)])
        loop = Loop(cell, dtype="float64", kernel="pallas")
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


@pytest.mark.parametrize("cell", KERNEL_CELLS)
def test_bfloat16_kernels_are_close_to_float32(key, cell: str) -> None:
    p, h0, tokens = problem(key, 16, 6, cell)
    with jax.default_matmul_precision("highest"):
        want = rnn_unroll(p, h0, tokens, Loop(cell, fast=False))[1]
    bf16 = Loop(cell, dtype="bfloat16", kernel="pallas")
    got = rnn_unroll(p, h0, tokens, bf16)[1]
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05)
    grads = jax.grad(lambda q: rnn_unroll(q, h0, tokens, bf16)[1].astype(jnp.float32).sum())(p)
    assert all(g.dtype == jnp.float32 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("cell", ["rnn", "lstm"])  # the tanh kernel, and the gated one with a pair as state
def test_a_run_with_pallas_kernels_trains_as_the_scan_path(tiny_cfg, tiny_corpus, cell: str) -> None:
    """`--kernel pallas` through the whole training program (fused chunks, two devices): the params
    after an epoch equal the scan path's to float32 rounding."""
    with jax.default_matmul_precision("highest"):
        want = jaxrnn.train(tiny_cfg(cell=cell, kernel="scan"), corpus=tiny_corpus, progress=False).params
        got = jaxrnn.train(tiny_cfg(cell=cell, kernel="pallas"), corpus=tiny_corpus, progress=False).params
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes", [dict(cell="mingru"), dict(cell="gru", gru_reset="before"), dict(impl="flax")],
                         ids=["mingru", "gru-d2l", "flax"])
def test_pallas_is_refused_where_there_is_no_kernel(tiny_cfg, changes: dict) -> None:
    with pytest.raises(ConfigError, match="--kernel pallas runs the scratch cells that have Pallas kernels "
                                          "\\(rnn, lstm, gru\\)"):
        build_model(tiny_cfg(kernel="pallas", **changes), V)
