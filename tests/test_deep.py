"""Deep and regularised models: stacked layers, embeddings, tied heads and dropout against float64
numpy and the Flax twins; Adam, AdamW, weight decay and schedules against their formulas."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrnn.cells import Loop
from jaxrnn.config import Config
from jaxrnn.errors import ConfigError
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM, build_model, dropout
from jaxrnn.steps import Steps, init_state, loss_sum
from jaxrnn.training import fit, learning_rate, make_optimizer

V, H, B, T = 11, 6, 4, 7
# each cell in one stacked shape, and the tanh cell in all of them: every layer kind is covered by default,
# the tanh cell's embedded and tied shapes again with -m slow
CASES = [("rnn", dict(layers=2)), pytest.param("rnn", dict(layers=3, embed=5), marks=pytest.mark.slow),
         pytest.param("rnn", dict(layers=2, embed=H, tie=True), marks=pytest.mark.slow),
         ("lstm", dict(layers=3, embed=5)), ("gru", dict(layers=2, embed=H, tie=True))]
CASE_IDS = ["rnn-2-one-hot", "rnn-3-embed", "rnn-2-tied", "lstm-3-embed", "gru-2-tied"]


def big(params, key):
    """Weights far from zero, so every gate and layer matters."""
    leaves, tree = jax.tree.flatten(params)
    return jax.tree.unflatten(tree, [0.5 * jax.random.normal(jax.random.fold_in(key, i), a.shape)
                                     for i, a in enumerate(leaves)])


def np_stack_forward(ref, cell: str, p: dict, tokens_BxT: np.ndarray, states: list, layers: int):
    """The stacked model in float64 numpy: embedding rows (or one-hot), each layer on the one below,
    the head (or the tied embedding's transpose)."""
    x = np.asarray(p["embed"]["E"], np.float64)[tokens_BxT.T] if "embed" in p else np.eye(V)[tokens_BxT.T]
    last = []
    for i in range(layers):
        s, x = ref.cell_run(cell, p["rnn" if i == 0 else f"rnn_{i + 1}"], states[i], x)
        last.append(s)
    W = np.asarray(p["embed"]["E"], np.float64).T if "W_hq" not in p["head"] else np.asarray(p["head"]["W_hq"])
    return (x @ W + np.asarray(p["head"]["b_q"])).transpose(1, 0, 2), last


def random_states(key, cell: str, layers: int):
    def one(i):
        h, c = (0.5 * jax.random.normal(jax.random.fold_in(key, 2 * i + j), (B, H)) for j in (0, 1))
        return (h, c) if cell == "lstm" else h
    return tuple(one(i) for i in range(layers))


@pytest.mark.parametrize(("cell", "shape"), CASES, ids=CASE_IDS)
def test_stacked_models_match_float64_numpy_and_the_flax_twin(key, ref, cell: str, shape: dict) -> None:
    scratch = ScratchRNNLM(ModelConfig(V, H, Loop(cell), **shape))
    p = big(scratch.init(key), key)
    assert ("W_hq" in p["head"]) != shape.get("tie", False)
    assert [k for k in p if k.startswith("rnn")] == ["rnn", *[f"rnn_{i}" for i in range(2, shape["layers"] + 1)]]
    tokens = jax.random.randint(jax.random.fold_in(key, 7), (B, T), 0, V)
    s0 = random_states(jax.random.fold_in(key, 9), cell, shape["layers"])
    want, want_s = np_stack_forward(ref, cell, p, np.asarray(tokens), list(s0), shape["layers"])
    flax_lm = ConciseRNNLM(ModelConfig(V, H, Loop(cell), **shape))
    q = ref.as_flax(cell, p)
    assert jax.tree.map(jnp.shape, q) == jax.tree.map(jnp.shape, flax_lm.init(key))
    flip = (lambda s: s[::-1]) if cell == "lstm" else (lambda s: s)  # Flax's LSTM carry is (c, h)
    with jax.default_matmul_precision("highest"):
        got, got_s = scratch.forward(p, tokens, s0)
        twin, twin_s = flax_lm.forward(q, tokens, tuple(flip(s) for s in s0))
    np.testing.assert_allclose(got, want, atol=3e-6)
    np.testing.assert_allclose(twin, want, atol=3e-6)
    for g, f, w in zip(got_s, twin_s, want_s):
        for a, b, c in zip(jax.tree.leaves(g), jax.tree.leaves(flip(f)), jax.tree.leaves(w)):
            np.testing.assert_allclose(a, c, atol=3e-6)
            np.testing.assert_allclose(b, c, atol=3e-6)


def test_dropout_keeps_the_expected_fraction_and_mean(key) -> None:
    x = jnp.ones((200, 500))
    y = np.asarray(dropout(x, 0.7, key, 0))  # keeping 0.7: a rate of 0.3
    zeros = (y == 0).mean()
    assert abs(zeros - 0.3) < 4 * math.sqrt(0.3 * 0.7 / y.size)  # binomial, 4 sigma
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    assert not np.array_equal(y, np.asarray(dropout(x, 0.7, key, 1)))  # each place its own mask
    x = jax.random.normal(key, (200, 500))  # a replica's keep probability, traced: the same masks and values
    np.testing.assert_array_equal(jax.jit(lambda x, k: dropout(x, 0.7, k, 0))(x, key),
                                  jax.jit(lambda x, k, p: dropout(x, p, k, 0))(x, key, np.float32(0.7)))
    assert dropout(x, 0.7, None, 0) is x and dropout(x, 1.0, key, 0) is x  # no key, or keeping everything


@pytest.mark.parametrize("impl", [ScratchRNNLM, ConciseRNNLM], ids=["scratch", "flax"])
def test_dropout_acts_in_training_only(key, impl) -> None:
    model = impl(ModelConfig(V, H, layers=2, embed=5, dropout=0.5))
    p = model.init(key)
    tokens = jax.random.randint(key, (B, T), 0, V)
    s0 = model.init_state(B)
    plain = impl(ModelConfig(V, H, layers=2, embed=5)).forward(p, tokens, s0)[0]
    np.testing.assert_array_equal(model.forward(p, tokens, s0)[0], plain)  # no key: deterministic
    a = model.forward(p, tokens, s0, jax.random.key(1))[0]
    np.testing.assert_array_equal(a, model.forward(p, tokens, s0, jax.random.key(1))[0])
    assert not np.allclose(a, plain) and not np.allclose(a, model.forward(p, tokens, s0, jax.random.key(2))[0])


def test_dropout_training_is_seeded_and_resumes_exactly(tiny_cfg, tiny_corpus) -> None:
    """Masks come from (seed, step): a run split in two equals the run in one go, bit for bit."""
    cfg = tiny_cfg(epochs=2, layers=2, embed=8, dropout=0.3)
    model = build_model(cfg, len(tiny_corpus.vocab))
    whole, hist = fit(cfg, tiny_corpus, model)
    half, _ = fit(cfg.replace(epochs=1), tiny_corpus, model)
    resumed, hist2 = fit(cfg, tiny_corpus, model, half, start=1)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(a, b)
    assert hist[-1]["val_loss"] == hist2[-1]["val_loss"]
    grads = jax.jit(Steps(model, make_optimizer(cfg), cfg.num_steps).grad_sums)
    batch = (jnp.int32(cfg.seed), jnp.asarray(tiny_corpus.part_tokens("train")), jnp.arange(128), jnp.ones(128, bool))
    g0, g1 = (grads(whole.params, *batch, jnp.int32(step))[0]["rnn_2"]["W_hh"] for step in (0, 1))
    assert not np.allclose(g0, g1)  # each step draws its own masks


def one_step(cfg: Config, tiny_corpus, steps: int = 1):
    """The params before and after `steps` optimizer steps on the first batch, and each step's clipped
    gradient in float64 (the gradient itself is checked against float64 numpy in test_training)."""
    model = build_model(cfg, len(tiny_corpus.vocab))
    tx = make_optimizer(cfg)
    state = init_state(model, tx, cfg.seed)
    windows, tokens = jnp.asarray(tiny_corpus.train), jnp.asarray(tiny_corpus.part_tokens("train"))
    idx, mask = jnp.arange(cfg.batch_size), jnp.ones(cfg.batch_size, bool)
    step = jax.jit(Steps(model, tx, cfg.num_steps).step)
    p0, grads = state.params, []
    for _ in range(steps):
        g = jax.grad(lambda q: (lambda s, n, _: s / n)(*loss_sum(model, q, windows[idx], mask)))(state.params)
        g = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(g)}
        norm = math.sqrt(sum((v**2).sum() for v in g.values()))
        grads.append({k: v * min(1.0, cfg.clip / norm) for k, v in g.items()})
        state, _, _ = step(state, jnp.int32(cfg.seed), tokens, idx, mask)
    flat = lambda t: {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(t)}  # noqa: E731
    return flat(p0), flat(state.params), grads


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_optimizers_follow_their_update_rules(tiny_cfg, tiny_corpus, name: str) -> None:
    """Two steps against float64 numpy: SGD p - lr (g + wd p); Adam with L2 (g + wd p into the
    moments); AdamW with the decay outside the moments, all after global-norm clipping."""
    lr, wd, b1, b2, eps = 0.05, 0.5, 0.9, 0.999, 1e-8
    cfg = tiny_cfg(optimizer=name, lr=lr, weight_decay=wd, clip=0.5)
    p, got, grads = one_step(cfg, tiny_corpus, steps=2)
    m = {k: 0.0 for k in p}
    v = {k: 0.0 for k in p}
    for t, g in enumerate(grads, start=1):
        for k in p:
            gk = g[k] + (wd * p[k] if name != "adamw" else 0.0)
            if name == "sgd":
                p[k] = p[k] - lr * gk
                continue
            m[k] = b1 * m[k] + (1 - b1) * gk
            v[k] = b2 * v[k] + (1 - b2) * gk**2
            u = (m[k] / (1 - b1**t)) / (np.sqrt(v[k] / (1 - b2**t)) + eps)
            p[k] = p[k] - lr * (u + (wd * p[k] if name == "adamw" else 0.0))
    for k in p:
        # Adam divides by |g|: where two steps' float32 gradients nearly cancel, rounding moves an
        # element by ~1e-3 lr; a wrong rule (no bias correction, no decay) moves them by >= 2e-2 lr
        np.testing.assert_allclose(got[k], p[k], rtol=2e-4, atol=2e-3 * lr, err_msg=str(k))


def test_schedules_follow_their_formulas(tiny_cfg) -> None:
    cfg = tiny_cfg(epochs=5, lr=0.5, schedule="cosine", warmup=3)  # 4 steps per epoch: 20 in all
    lr = learning_rate(cfg, 4)
    for t in range(21):
        want = 0.5 * t / 3 if t < 3 else 0.5 * 0.5 * (1 + math.cos(math.pi * (t - 3) / 17))
        assert float(lr(t)) == pytest.approx(want, abs=1e-7)
    constant = learning_rate(tiny_cfg(lr=0.5, warmup=2), 4)
    assert [float(constant(t)) for t in (0, 1, 2, 9)] == pytest.approx([0.0, 0.25, 0.5, 0.5])
    assert isinstance(make_optimizer(tiny_cfg()), optax.GradientTransformation)


@pytest.mark.parametrize(("changes", "match"), [
    (dict(tie=True, embed=8), "--tie .* needs --embed equal to --hidden"),
    (dict(dropout=1.0), "--dropout must be in"),
    (dict(layers=0), "--layers must be a positive integer"),
    (dict(embed=-1), "--embed must be an integer >= 0"),
    (dict(optimizer="rmsprop"), "--optimizer 'rmsprop' is unknown"),
    (dict(weight_decay=-0.1), "--weight-decay must be"),
    (dict(schedule="linear"), "--schedule 'linear' is unknown"),
])
def test_bad_settings_are_refused(tiny_cfg, changes: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        tiny_cfg(**changes)
