"""The Pallas kernels for every cell that has them, in interpret mode on CPU: against the scan path, the
float64 reference, finite differences, in bfloat16, and through a training run; kernels.py's whole-loop
kernels, and step_kernels.py's per-step kernels for wide layers (the `per_step` fixture)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import kernels, step_kernels
from jaxrnn.cells import CELLS, Loop, cell_init, rnn_unroll, zero_state
from jaxrnn.errors import ConfigError
from jaxrnn.execution import resolve
from jaxrnn.models import ModelConfig, ScratchRNNLM, build_model
from jaxrnn.sample import generate

V, H = 11, 16
KERNEL_FORMS = [name for name, cell in CELLS.items() if cell.kernels]  # rnn, lstm, gru, gru-d2l (d2l's GRU)


def pallas(cell: str, wide: bool = False, **loop) -> Loop:
    """The cell's loop on its whole-loop Pallas kernels, or (`wide`) on its per-step ones."""
    return Loop(cell, run="step-kernels" if wide else "kernels", **loop)


def problem(key: jax.Array, B: int, T: int, form: str = "rnn", dtype=jnp.float32):
    """Weights big enough that every gate is far from linear, non-zero biases, a random start state
    (a pair for the LSTM) and tokens."""
    cell = form
    p = {k: (0.4 * jax.random.normal(jax.random.fold_in(key, i), v.shape) if k != "W_xh" else v).astype(dtype)
         for i, (k, v) in enumerate(cell_init(key, V, H, 0.5, cell).items())}
    h, c = ((0.5 * jax.random.normal(jax.random.fold_in(key, 20 + i), (B, H))).astype(dtype) for i in range(2))
    tokens = jax.random.randint(jax.random.fold_in(key, 2), (T, B), 0, V)
    return p, ((h, c) if cell == "lstm" else h), tokens


@pytest.fixture
def per_step(monkeypatch) -> None:
    """Every layer on the per-step kernels, as if no W_hh fitted on chip, in blocks of 16 rows and 8
    columns, the matmuls in chunks of 8: a 16-wide layer spans two blocks and two chunks (on a GPU 16,
    Triton's least)."""
    monkeypatch.setattr(kernels, "MAX_WEIGHT_BYTES", 0)
    monkeypatch.setattr(step_kernels, "ROWS", kernels.MIN_DIM)
    for name in ("COLS", "BACK_COLS", "CHUNK"):
        monkeypatch.setattr(step_kernels, name, 8 if kernels.interpreted() else kernels.MIN_DIM)


def loss_of(loop: Loop, tokens, w):
    def loss(p, s0):
        s, hs = rnn_unroll(p, s0, tokens, loop)
        return (hs * w).sum() + sum((a**2).sum() for a in jax.tree.leaves(s))
    return loss


# by default a padded block of rows, or two blocks of 16 (the second padded): the per-step LSTM and GRU (every
# form meets the float64 reference below by default); the others, the whole-loop forms among them, slow
@pytest.mark.parametrize(("cell", "B", "T", "wide"), [
    ("lstm", 5, 3, True), ("gru", 20, 4, True),
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [
        ("rnn", 48, 9, False), ("gru-d2l", 5, 3, False), ("lstm", 5, 1, False), ("gru", 48, 9, False),
        ("rnn", 48, 5, True), ("rnn", 5, 7, False), ("rnn", 32, 1, False), ("lstm", 48, 9, False), ("gru", 5, 3, False),
        ("gru-d2l", 48, 9, False)]]])
def test_kernels_equal_the_scan_path(key, request, cell: str, B: int, T: int, wide: bool) -> None:
    """Forward and gradients (params and start state, for a loss on all states and the last state)."""
    if wide:
        request.getfixturevalue("per_step")
    p, s0, tokens = problem(key, B, T, cell)
    w = jax.random.normal(jax.random.fold_in(key, 3), (T, B, H))
    run = jax.jit(lambda p, s0, loop: rnn_unroll(p, s0, tokens, loop), static_argnums=2)  # traced afresh
    with jax.default_matmul_precision("highest"):
        want_s, want_hs = run(p, s0, Loop(cell))
        got_s, got_hs = run(p, s0, pallas(cell, wide))
        # float32 rounding in another order (on an H100, up to 1.1e-6 after 9 steps; cells.Loop: within 1e-5)
        np.testing.assert_allclose(got_hs, want_hs, atol=1e-5)
        for g, w_ in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s)):
            np.testing.assert_allclose(g, w_, atol=1e-5)
        want = jax.jit(jax.grad(loss_of(Loop(cell), tokens, w), argnums=(0, 1)))(p, s0)
        got = jax.jit(jax.grad(loss_of(pallas(cell, wide), tokens, w), argnums=(0, 1)))(p, s0)
    for g, w_ in zip(jax.tree.leaves(got), jax.tree.leaves(want)):  # float32 sums in another order
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=1e-6 * float(jnp.abs(w_).max()))


def test_a_width_the_per_step_blocks_do_not_divide_takes_the_whole_loop_kernels(key, per_step) -> None:
    """On a CPU (interpret mode, any width) hidden 12 is not cut into blocks of 8 columns: the whole-loop
    kernels run it, and equal the scan path (the per-step kernels would leave columns out)."""
    assert not step_kernels.takes(12) and step_kernels.takes(16)
    loop = resolve(jaxrnn.Config(cell="lstm", hidden=12, kernel="pallas"), "cpu")
    assert loop.run == "kernels"
    assert resolve(jaxrnn.Config(cell="lstm", hidden=16, kernel="pallas"), "cpu").run == "step-kernels"
    p = {k: 0.4 * jax.random.normal(jax.random.fold_in(key, i), v.shape)
         for i, (k, v) in enumerate(cell_init(key, V, 12, 0.5, "lstm").items())}
    s0, tokens = (jnp.zeros((4, 12)),) * 2, jax.random.randint(key, (3, 4), 0, V)
    f = jax.jit(lambda p, loop: rnn_unroll(p, s0, tokens, loop)[1], static_argnums=1)
    with jax.default_matmul_precision("highest"):
        np.testing.assert_allclose(f(p, Loop("lstm", loop.unroll, run=loop.run)), f(p, Loop("lstm")), atol=1e-5)


@pytest.mark.parametrize(("cell", "wide"), [*[(f, False) for f in KERNEL_FORMS], ("gru", True),
                                             *[pytest.param(f, True, marks=pytest.mark.slow) for f in ("rnn", "lstm")]])
def test_kernels_match_float64_numpy_and_finite_differences(key, ref, request, cell: str, wide: bool) -> None:
    if wide:
        request.getfixturevalue("per_step")
    with jax.enable_x64(True):
        p, h0, tokens = problem(key, 6, 5, cell, jnp.float64)
        _, want_hs = ref.cell_run(cell, p, h0, np.eye(V)[np.asarray(tokens)])
        loop = pallas(cell, wide, dtype="float64")
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


@pytest.mark.parametrize(("cell", "wide"), [("lstm", False), ("gru-d2l", False), *[
    pytest.param(*case, marks=pytest.mark.slow) for case in [("lstm", True), ("rnn", False), ("gru", False),
                                                             ("rnn", True), ("gru", True)]]])
def test_bfloat16_kernels_are_close_to_float32(key, request, cell: str, wide: bool) -> None:
    if wide:
        request.getfixturevalue("per_step")
    p, h0, tokens = problem(key, 16, 6, cell)
    run = jax.jit(lambda p, h0, loop: rnn_unroll(p, h0, tokens, loop)[1], static_argnums=2)
    with jax.default_matmul_precision("highest"):
        want = run(p, h0, Loop(cell))
    bf16 = pallas(cell, wide, dtype="bfloat16")
    got = run(p, h0, bf16)
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(got.astype(jnp.float32), want, atol=0.05)
    grads = jax.jit(jax.grad(lambda q: rnn_unroll(q, h0, tokens, bf16)[1].astype(jnp.float32).sum()))(p)
    assert all(g.dtype == jnp.float32 and jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads))


# the tanh kernel, and (slow) the gated one with a pair as state, and the per-step kernels
@pytest.mark.parametrize(("cell", "wide"), [("rnn", False), *[pytest.param(*case, marks=pytest.mark.slow) for case in
                                                              [("lstm", False), ("rnn", True), ("lstm", True)]]])
def test_a_run_with_pallas_kernels_trains_as_the_scan_path(tiny_cfg, tiny_corpus, request, cell: str, wide: bool
                                                           ) -> None:
    """`--kernel pallas` through the whole training program (fused chunks, two devices): the params
    after an epoch equal the scan path's to float32 rounding."""
    if wide:
        request.getfixturevalue("per_step")
    with jax.default_matmul_precision("highest"):
        want = jaxrnn.train(tiny_cfg(cell=cell, kernel="scan"), corpus=tiny_corpus, progress=False).params
        got = jaxrnn.train(tiny_cfg(cell=cell, kernel="pallas"), corpus=tiny_corpus, progress=False).params
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("changes", [dict(cell="mingru"), dict(impl="flax")], ids=["mingru", "flax"])
def test_pallas_is_refused_where_there_is_no_kernel(tiny_cfg, changes: dict) -> None:
    with pytest.raises(ConfigError, match="--kernel pallas runs the scratch cells that have Pallas kernels "
                                          "\\(rnn, lstm, gru, gru-d2l\\)"):
        build_model(tiny_cfg(kernel="pallas", **changes), V)


@pytest.mark.parametrize(("cell", "layers", "embed", "tie"), [
    *[(f, 1, 0, False) for f in ("rnn", "lstm", "gru-d2l")],
    *[pytest.param(*case, marks=pytest.mark.slow) for case in [("gru", 1, 0, False), ("lstm", 2, 16, True),
                                                               ("gru-d2l", 2, 16, True)]]])
def test_greedy_decoding_kernel_equals_the_scan_loop(cell: str, layers: int, embed: int, tie: bool) -> None:
    """The one-kernel decoder against `generate`'s scan loop: the same tokens for a batch of prompts of
    several lengths (3 rows, padded to 16 inside), for a model whose logits are far from ties."""
    by_scan, by_kernel = (ScratchRNNLM(ModelConfig(V, H, pallas(cell, decode=d), layers, embed, tie, sigma=0.5))
                          for d in ("scan", "kernel"))
    params = by_scan.init(jax.random.PRNGKey(3))
    prompts = [np.array([1, 2, 3, 4]), np.array([5]), np.array([9, 0])]
    with jax.default_matmul_precision("highest"):
        want = generate(by_scan, params, prompts, 30)
        got = generate(by_kernel, params, prompts, 30)
    assert len(set(want.ravel().tolist())) > 3  # the decode moves between tokens, so equality says something
    np.testing.assert_array_equal(got, want)


def test_greedy_decoding_runs_by_kernel_where_the_loop_does_off_cpus(monkeypatch) -> None:
    """Not on the scan path, not on a CPU (it only interprets the kernel), not for a W_hh that does not fit
    on chip (the decoding kernel holds it), not for a cell without a matmul-then-update step."""
    def decode(backend: str, **changes) -> str:
        return resolve(jaxrnn.Config(hidden=16, **changes), backend).decode
    assert decode("gpu") == decode("gpu", kernel="pallas") == "kernel"
    assert decode("cpu", kernel="pallas") == decode("gpu", kernel="scan") == "scan"
    monkeypatch.setattr(kernels, "MAX_WEIGHT_BYTES", 0)  # no W_hh fits on chip
    assert resolve(jaxrnn.Config(hidden=16, kernel="pallas"), "gpu").run == "step-kernels"
    assert decode("gpu", kernel="pallas") == "scan"
    with pytest.raises(ValueError, match="'mingru' has no decoding kernel"):
        Loop("mingru", decode="kernel")


def test_bfloat16_greedy_decoding_kernel_runs(key) -> None:
    model = ScratchRNNLM(ModelConfig(V, H, pallas("lstm", dtype="bfloat16", decode="kernel"), sigma=0.5))
    toks = generate(model, model.init(key), [np.array([1, 2])], 12)
    assert toks.shape == (1, 12) and toks.min() >= 0 and toks.max() < V  # the padded vocab is never chosen


@pytest.mark.parametrize(("changes", "pays"), [
    (dict(), True), (dict(cell="lstm"), True), (dict(cell="gru", hidden=128), True),  # 192 KiB of W_hh fit
    (dict(cell="lstm", hidden=128), False), (dict(cell="lstm", hidden=128, dtype="bfloat16"), True),  # 256 / 128 KiB
    (dict(hidden=224), False), (dict(impl="flax"), False), (dict(cell="mingru"), False),
    (dict(cell="gru-d2l"), False), (dict(embed=24), False)])  # d2l's GRU: not yet run on a GPU
def test_auto_takes_the_kernels_on_gpus_where_they_fit(changes: dict, pays: bool) -> None:
    cfg = jaxrnn.Config(**changes)
    assert (resolve(cfg, "gpu").run == "kernels") is pays
    assert resolve(cfg, "cpu").run in ("scan", "sequence") and resolve(cfg, "tpu").run in ("scan", "sequence")


def test_pallas_on_a_gpu_refuses_widths_triton_cannot_compile(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="--hidden 24 is not a power of two of at least 16; pass --kernel scan"):
        resolve(tiny_cfg(kernel="pallas", hidden=24), "gpu")
    with pytest.raises(ConfigError, match="W_hh at --hidden 256 is 768 KiB, over the 192 KiB one program holds, "
                                          "and this cell has no per-step kernels for wider layers"):
        resolve(tiny_cfg(kernel="pallas", hidden=256, cell="gru-d2l"), "gpu")
    assert resolve(tiny_cfg(kernel="pallas", hidden=24), "cpu").run == "kernels"  # interpreted: any width
    assert resolve(tiny_cfg(kernel="pallas", hidden=64), "gpu").run == "kernels"
    assert resolve(tiny_cfg(kernel="pallas", hidden=1024, cell="lstm"), "gpu").run == "step-kernels"


@pytest.mark.parametrize("wide", [False, True], ids=["whole-loop", "per-step"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_every_kernel_lowers_for_triton(monkeypatch, request, dtype: str, wide: bool) -> None:
    """The GPU path without a GPU: each form's training step (forward and gradient) and greedy decoding,
    lowered for CUDA by Pallas' Triton lowering, which refuses what Triton cannot take (arrays whose sizes
    are not powers of two, bfloat16 math functions, ...). Compiling them needs the GPU."""
    if wide:
        request.getfixturevalue("per_step")
    monkeypatch.setattr(kernels, "interpreted", lambda: False)
    for form in [f for f in KERNEL_FORMS if not (wide and f == "gru-d2l")]:
        loop = pallas(form, wide, dtype=dtype)
        p = {k: v.astype(dtype) for k, v in cell_init(jax.random.key(0), V, H, 0.1, form).items()}
        s0 = jax.tree.map(lambda a: a.astype(dtype), zero_state(form, 20, H))
        loss = jax.grad(lambda p, s, loop=loop: rnn_unroll(p, s, jnp.zeros((3, 20), jnp.int32), loop)[1].sum())
        text = jax.jit(loss).trace(p, s0).lower(lowering_platforms=("cuda",)).as_text()
        assert ("matmul_step_bwd" if wide else "_bwd") in text, form
        if not wide:
            model = ScratchRNNLM(ModelConfig(V, H, loop, sigma=0.5))
            decode = functools.partial(model.greedy, num_preds=4)
            args = model.init(jax.random.key(1)), model.init_state(3), jnp.zeros(3, jnp.int32)
            assert "greedy_decode" in jax.jit(decode).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
