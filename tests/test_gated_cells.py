"""Every cell of the registry: scratch against float64 numpy (d2l's per-gate formulas, the papers' for
minGRU and IndRNN), against their Flax twins given the same weights, and their gradients against finite
differences in float64."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.cells import Loop, cell_init, rnn_unroll
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM

V, H, B, T = 11, 6, 4, 7
RECENT = ["minlstm", "lru", "rglru", "slstm"]  # the cells of the last decade
FORMS = ["rnn", "lstm", "gru", "gru-d2l", "mingru", "indrnn", *RECENT]
SEQUENCE = ["rnn", "mingru", "minlstm", "lru", "rglru"]  # with a `sequence` form: the hoisted backward, a parallel scan
EVERY_FORM = [(c, "scan") for c in FORMS] + [(c, "sequence") for c in SEQUENCE]  # (cell, Loop.run)
EVERY_FORM_IDS = [*FORMS, "rnn-hoisted", *(f"{c}-parallel" for c in SEQUENCE[1:])]
OPTIONS = {"slstm": (("heads", 2),)}  # H = 6: two heads of three


def random_params(key: jax.Array, cell: str, dtype=jnp.float32) -> dict:
    """Weights big enough that every gate is far from linear, and non-zero biases."""
    p = cell_init(key, V, H, 0.5, cell, OPTIONS.get(cell, ()))
    return {k: (0.4 * jax.random.normal(jax.random.fold_in(key, i), v.shape) if k != "W_xh" else v).astype(dtype)
            for i, (k, v) in enumerate(p.items())}


def random_state(key: jax.Array, cell: str, dtype=jnp.float32):
    h, c, n, m = ((0.5 * jax.random.normal(jax.random.fold_in(key, i), (B, H))).astype(dtype) for i in range(4))
    if cell == "slstm":  # (h, c, n, m): the normaliser positive
        return h, c, 1 + jnp.abs(n), m
    return (h, c) if cell in ("lstm", "lru") else h


@pytest.fixture
def tokens(key) -> jax.Array:
    return jax.random.randint(jax.random.fold_in(key, 7), (T, B), 0, V)


def test_init_shapes(key) -> None:
    def init(c):  # traced, not run: no program to compile per random draw
        return jax.eval_shape(lambda k: cell_init(k, V, H, cell=c, options=OPTIONS.get(c, ())), key)

    shapes = {c: jax.tree.map(jnp.shape, init(c)) for c in FORMS}
    assert shapes["rnn"] == {"W_xh": (V, H), "W_hh": (H, H), "b_h": (H,)}
    assert shapes["lstm"] == {"W_xh": (V, 4 * H), "W_hh": (H, 4 * H), "b_h": (4 * H,)}
    assert shapes["gru"] == {"W_xh": (V, 3 * H), "W_hh": (H, 3 * H), "b_h": (3 * H,), "b_hn": (H,)}
    assert shapes["gru-d2l"] == {"W_xh": (V, 3 * H), "W_hh": (H, 3 * H), "b_h": (3 * H,)}
    assert shapes["mingru"] == {"W_xh": (V, 2 * H), "b_h": (2 * H,)}
    assert shapes["indrnn"] == {"W_xh": (V, H), "b_h": (H,), "u": (H,)}
    assert shapes["minlstm"] == {"W_xh": (V, 3 * H), "b_h": (3 * H,)}
    assert shapes["lru"] == {"W_xh": (V, 3 * H), "b_h": (3 * H,), "nu_log": (H,), "theta_log": (H,), "C_re": (H, H),
                             "C_im": (H, H)}
    assert shapes["rglru"] == {"W_xh": (V, 4 * H), "b_h": (4 * H,), "Lambda": (H,)}
    assert shapes["slstm"] == {"W_xh": (V, 4 * H), "b_h": (4 * H,), "R": (2, 3, 12), "norm": (H,)}


def test_indrnn_draws_u_from_its_option_range(key) -> None:
    """IndRNN's option: u uniform in [u_min, u_max], its defaults [0, 1] where none are given."""
    u = np.asarray(cell_init(key, V, 2000, cell="indrnn", options=(("u_max", 0.5), ("u_min", 0.25)))["u"])
    assert 0.25 <= u.min() < 0.26 and 0.49 < u.max() <= 0.5
    u = np.asarray(cell_init(key, V, 2000, cell="indrnn")["u"])
    assert 0 <= u.min() < 0.01 and 0.99 < u.max() <= 1


@pytest.mark.parametrize(("cell", "run"), EVERY_FORM, ids=EVERY_FORM_IDS)
@pytest.mark.parametrize("unroll", [1, T])
def test_cells_match_float64_numpy(key, tokens, ref, cell: str, unroll: int, run: str) -> None:
    """Every cell's step, and its `sequence` form where it has one, against the numpy reference."""
    p, s0 = random_params(key, cell), random_state(jax.random.fold_in(key, 9), cell)
    want_s, want_hs = ref.cell_run(cell, p, s0, np.eye(V)[np.asarray(tokens)])
    with jax.default_matmul_precision("highest"):
        got_s, got_hs = rnn_unroll(p, s0, tokens, Loop(cell, unroll, run=run, options=OPTIONS.get(cell, ())))
    np.testing.assert_allclose(got_hs, want_hs, atol=2e-6)
    for g, w in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s)):
        np.testing.assert_allclose(g, w, atol=2e-6)


@pytest.mark.parametrize("cell", ["lstm", "gru"])  # the tanh cell: test_models.py
def test_scratch_cells_equal_their_flax_twins(key, tokens, ref, cell: str) -> None:
    scratch = ScratchRNNLM(ModelConfig(V, H, Loop(cell)))
    flax_lm = ConciseRNNLM(ModelConfig(V, H, Loop(cell)))
    p = {"rnn": random_params(key, cell), "head": ScratchRNNLM(ModelConfig(V, H, sigma=0.5)).init(key)["head"]}
    q = ref.as_flax(cell, p)
    assert jax.tree.map(jnp.shape, q) == jax.tree.map(jnp.shape, flax_lm.init(key))
    s0 = random_state(jax.random.fold_in(key, 9), cell)
    flax_s0 = s0[::-1] if cell == "lstm" else s0  # Flax's LSTM carry is (c, h)
    with jax.default_matmul_precision("highest"):
        want, want_s = scratch.forward(p, tokens.T, s0)
        got, got_s = flax_lm.forward(q, tokens.T, flax_s0)
    np.testing.assert_allclose(got, want, atol=2e-6)
    got_s = got_s[::-1] if cell == "lstm" else got_s
    for g, w in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s)):
        np.testing.assert_allclose(g, w, atol=2e-6)


def test_optimized_lstm_cell_equals_lstm_cell(key) -> None:
    """The concise LSTM uses nn.OptimizedLSTMCell (gates fused); it computes what nn.LSTMCell does."""
    x = jax.random.normal(key, (B, V))
    carry = tuple(jax.random.normal(jax.random.fold_in(key, i), (B, H)) for i in (1, 2))
    params = nn.LSTMCell(H).init(jax.random.fold_in(key, 3), carry, x)
    params = jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.fold_in(key, a.size), a.shape), params)
    assert jax.tree.structure(params) == jax.tree.structure(nn.OptimizedLSTMCell(H).init(key, carry, x))
    with jax.default_matmul_precision("highest"):
        want = nn.LSTMCell(H).apply(params, carry, x)
        got = nn.OptimizedLSTMCell(H).apply(params, carry, x)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, atol=1e-6)


# The parallel forms' gradients equal the step loop's (test_the_parallel_form_equals_the_step_loop), whose are
# checked here by default; the parallel forms' own, gru-d2l's (the GRU with its reset moved) and the tanh
# cell's (against finite differences by default in test_training.py and test_kernels.py) run with -m slow.
FD_SLOW = {"rnn", "gru-d2l", *(f"{c}-parallel" for c in SEQUENCE[1:])}


@pytest.mark.parametrize(("cell", "run"), [pytest.param(*form, id=i, marks=[pytest.mark.slow] * (i in FD_SLOW))
                                           for form, i in zip(EVERY_FORM, EVERY_FORM_IDS, strict=True)])
def test_gradients_match_finite_differences_in_float64(key, tokens, cell: str, run: str) -> None:
    """<grad, d> against (L(p + eps d) - L(p - eps d)) / 2 eps along random directions d of every
    parameter and the initial state, for a loss on all outputs and the last state."""
    with jax.enable_x64(True):
        p = random_params(key, cell, jnp.float64)
        s0 = random_state(jax.random.fold_in(key, 9), cell, jnp.float64)
        w = jax.random.normal(jax.random.fold_in(key, 10), (T, B, H), jnp.float64)

        @jax.jit
        def loss(p, s0):
            s, hs = rnn_unroll(p, s0, tokens, Loop(cell, 2, "float64", run, options=OPTIONS.get(cell, ())))
            return (hs * w).sum() + sum((a**2).sum() for a in jax.tree.leaves(s))

        grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(p, s0)
        eps = 1e-6
        for i in range(3):
            leaves, tree = jax.tree.flatten((p, s0))
            d = [jax.random.normal(jax.random.fold_in(key, 100 + 10 * i + j), a.shape, jnp.float64)
                 for j, a in enumerate(leaves)]
            shifted = [jax.tree.unflatten(tree, [a + sign * eps * b for a, b in zip(leaves, d)]) for sign in (1, -1)]
            fd = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * eps)
            ad = sum((g * b).sum() for g, b in zip(jax.tree.leaves(grads), d))
            np.testing.assert_allclose(ad, fd, rtol=1e-6)


def test_the_registry_is_the_list_of_cells() -> None:
    """`cells.CELLS` defines every cell `--cell` offers, in config.CELLS' order; each twin it names
    exists (torch's: its recurrent modules, named without importing it, an optional dependency)."""
    from jaxrnn import cells, config

    assert tuple(cells.CELLS) == config.CELLS
    for name, cell in cells.CELLS.items():
        assert cell.flax is None or issubclass(getattr(nn, cell.flax), nn.RNNCellBase), name
        assert cell.torch in (None, "RNN", "LSTM", "GRU"), name


def test_a_cell_without_a_flax_twin_is_refused_for_flax(tiny_cfg) -> None:
    from jaxrnn.errors import ConfigError
    from jaxrnn.models import build_model

    with pytest.raises(ConfigError, match="--cell mingru has no Flax twin; pass --impl scratch"):
        build_model(tiny_cfg(cell="mingru", impl="flax"), 28)


def test_a_stacked_mingru_learns_and_decodes(tiny_cfg, tiny_corpus) -> None:
    """minGRU through the whole library: two layers (one alone reads only a linear filter of its
    inputs) train on the corpus, the parallel form in training and the step in decoding."""
    import jaxrnn

    cfg = tiny_cfg(cell="mingru", layers=2, epochs=3, optimizer="adam", lr=0.02)
    trained = jaxrnn.train(cfg, corpus=tiny_corpus, progress=False)
    ppl = [r["val_ppl"] for r in trained.history]
    assert ppl[-1] < ppl[0] < len(tiny_corpus.vocab), ppl
    text = trained.predict("time traveller", 10)
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 10


def test_indrnn_trains_with_its_options_and_decodes(tiny_cfg, tiny_corpus, tmp_path) -> None:
    """A cell with an option of its own, end to end: `cell_options` reach its init (through the resolver),
    the run directory records them, the loss falls, and the restored model decodes."""
    import json

    import jaxrnn

    cfg = tiny_cfg(cell="indrnn", cell_options={"u_max": 0.5}, epochs=4, lr=2.0)
    trained = jaxrnn.train(cfg, out=tmp_path / "run", corpus=tiny_corpus, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cell_options"] == {"u_max": 0.5}
    assert trained.model.cfg.loop.options == (("u_max", 0.5), ("u_min", 0.0))
    losses = [r["train_loss"] for r in trained.history]
    assert losses[-1] < losses[0] - 0.1, losses
    restored = jaxrnn.load(tmp_path / "run")
    text = restored.predict("time traveller", 10)
    assert text.startswith("time traveller") and len(text) == 24 and text == trained.predict("time traveller", 10)
    u = np.asarray(jaxrnn.train(cfg.replace(epochs=1, lr=1e-9), corpus=tiny_corpus, progress=False).params["rnn"]["u"])
    assert 0 <= u.min() and u.max() <= 0.5  # drawn from the option's range (barely moved at lr 1e-9)


@pytest.mark.parametrize(("cell", "run"), [(c, "scan") for c in RECENT] + [(c, "sequence") for c in RECENT[:3]],
                         ids=[*RECENT, *(f"{c}-parallel" for c in RECENT[:3])])
def test_recent_cells_match_their_papers_equations_in_float64(key, tokens, ref, cell: str, run: str) -> None:
    """minLSTM, LRU (complex numpy), RG-LRU and sLSTM (an explicit block-diagonal R), computed in float64:
    their outputs and last states within 1e-10 of the references written from the papers' equations."""
    with jax.enable_x64(True):
        p, s0 = random_params(key, cell, jnp.float64), random_state(jax.random.fold_in(key, 9), cell, jnp.float64)
        want_s, want_hs = ref.cell_run(cell, p, s0, np.eye(V)[np.asarray(tokens)])
        got_s, got_hs = rnn_unroll(p, s0, tokens, Loop(cell, 1, "float64", run, options=OPTIONS.get(cell, ())))
        np.testing.assert_allclose(got_hs, want_hs, rtol=0, atol=1e-10)
        for g, w in zip(jax.tree.leaves(got_s), jax.tree.leaves(want_s), strict=True):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-10)


@pytest.mark.parametrize("cell", SEQUENCE[1:])
def test_the_parallel_form_equals_the_step_loop(key, cell: str) -> None:
    """Over 64 steps, the associative scan and the step loop agree to float32 rounding in their outputs,
    last states and gradients (of every parameter and the initial state)."""
    T64 = 64
    tokens = jax.random.randint(key, (T64, B), 0, V)
    p, s0 = random_params(key, cell), random_state(jax.random.fold_in(key, 9), cell)
    w = jax.random.normal(jax.random.fold_in(key, 10), (T64, B, H))

    def loss(p, s0, run):
        s, hs = rnn_unroll(p, s0, tokens, Loop(cell, run=run))
        return (hs * w).sum() + sum((a**2).sum() for a in jax.tree.leaves(s)), (s, hs)

    with jax.default_matmul_precision("highest"):
        (_, loop), g_loop = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=2)(p, s0, "scan")
        (_, par), g_par = jax.jit(jax.value_and_grad(loss, (0, 1), has_aux=True), static_argnums=2)(p, s0, "sequence")
    for a, b in zip(jax.tree.leaves((loop, g_loop)), jax.tree.leaves((par, g_par)), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * float(np.abs(np.asarray(b)).max()))


def test_the_ring_initialisations_draw_from_their_option_ranges(key) -> None:
    """The LRU's |lambda| in [r_min, r_max] with its phase in [0, max_phase], and RG-LRU's sigmoid(Lambda) in
    [r_min, r_max] (Griffin's default ring 0.9-0.999)."""
    # 2000 units: each bound below is missed by all of them with a chance under 1e-5
    p = cell_init(key, V, 2000, cell="lru", options=(("max_phase", 3.14), ("r_max", 0.9), ("r_min", 0.5)))
    r, phase = np.exp(-np.exp(np.asarray(p["nu_log"]))), np.exp(np.asarray(p["theta_log"]))
    assert 0.5 <= r.min() < 0.51 and 0.89 < r.max() <= 0.9 and 0 <= phase.min() < 0.02 and 3.12 < phase.max() <= 3.14
    a = 1 / (1 + np.exp(-np.asarray(cell_init(key, V, 2000, cell="rglru")["Lambda"])))
    assert 0.9 <= a.min() < 0.901 and 0.998 < a.max() <= 0.999


@pytest.mark.parametrize(("cell", "options", "words"), [
    ("slstm", {"heads": 5}, "heads 5 must divide --hidden 16"),
    ("lru", {"r_min": 0.9, "r_max": 0.5}, "the ring needs 0 <= r_min < r_max <= 1"),
    ("rglru", {"r_max": 1.0}, "the ring needs 0 < r_min < r_max < 1"),
])
def test_a_cells_options_that_cannot_build_it_are_refused(tiny_cfg, cell, options, words) -> None:
    from jaxrnn.errors import ConfigError
    from jaxrnn.execution import resolve

    with pytest.raises(ConfigError, match=f"--cell-options for --cell {cell}: {words}"):
        resolve(tiny_cfg(cell=cell, cell_options=options))


@pytest.mark.parametrize("cell", ["minlstm", *(pytest.param(c, marks=pytest.mark.slow) for c in RECENT[1:])])
def test_a_recent_cell_learns_and_decodes(tiny_cfg, tiny_corpus, cell: str) -> None:
    """Each cell through the whole library: a small run's loss falls, below the uniform guess's, and greedy
    decoding continues a prefix."""
    import jaxrnn

    cfg = tiny_cfg(cell=cell, epochs=3, optimizer="adam", lr=0.02, cell_options=dict(OPTIONS.get(cell, ())) or None)
    trained = jaxrnn.train(cfg.replace(hidden=H * 2), corpus=tiny_corpus, progress=False)
    losses = [r["train_loss"] for r in trained.history]
    assert losses[-1] < losses[0] - 0.1 and trained.history[-1]["val_loss"] < np.log(len(tiny_corpus.vocab)) - 0.2
    text = trained.predict("time traveller", 10)
    assert text.startswith("time traveller") and len(text) == len("time traveller") + 10
