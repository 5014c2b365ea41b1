"""steps.py and training.py: the loss and its gradient against float64 references, clipping, and the two fit paths."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn.data import load_corpus
from jaxrnn.models import ModelConfig, ScratchRNNLM, build_model
from jaxrnn.steps import Steps, init_state, loss_sum
from jaxrnn.training import fit, fit_chunks, make_optimizer, perplexity, record


def mean_loss(model, params, windows, mask) -> jax.Array:
    s, n, _ = loss_sum(model, params, windows, mask)
    return s / n


def small_problem(key: jax.Array, V: int = 5, H: int = 3, B: int = 4, T: int = 4):
    """A tiny scratch model with non-trivial weights, a batch of windows and a mask hiding row 1."""
    model = ScratchRNNLM(ModelConfig(V, H))
    params = ScratchRNNLM(ModelConfig(V, H, sigma=0.7)).init(key)
    params["rnn"]["b_h"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 1), (H,))
    params["head"]["b_q"] = 0.3 * jax.random.normal(jax.random.fold_in(key, 2), (V,))
    windows = jax.random.randint(jax.random.fold_in(key, 3), (B, T + 1), 0, V)
    mask = jnp.array([True, False, True, True])
    return model, params, windows, mask


def np_mean_loss(ref, flat: dict[str, np.ndarray], windows: np.ndarray, rows: list[int]) -> float:
    """d2l's loss in float64: mean cross-entropy over every token of the given rows."""
    w = windows[rows]
    logits, _ = ref.lm_forward(flat, w[:, :-1], np.zeros((len(rows), flat["W_hh"].shape[0])))
    return float(ref.cross_entropy(logits, w[:, 1:]).mean())


def test_loss_with_mask_is_mean_over_real_rows(key, ref) -> None:
    model, params, windows, mask = small_problem(key)
    with jax.default_matmul_precision("highest"):
        s, n, _ = loss_sum(model, params, windows, mask)
        s_other, _, _ = loss_sum(model, params, windows.at[1].set(0), mask)  # a masked row's content is ignored
    assert float(n) == 3 * 4
    want = np_mean_loss(ref, ref.flat(params), np.asarray(windows), [0, 2, 3])
    np.testing.assert_allclose(float(s / n), want, rtol=1e-6)
    np.testing.assert_allclose(float(s_other), float(s), rtol=1e-7)


def test_gradient_matches_float64_finite_differences(key, ref) -> None:
    model, params, windows, mask = small_problem(key)
    with jax.default_matmul_precision("highest"):
        grads = ref.flat(jax.grad(lambda p: mean_loss(model, p, windows, mask))(params))
    flat, w, eps = ref.flat(params), np.asarray(windows), 1e-6
    for name, p in flat.items():
        fd = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            plus, minus = ({**flat, name: p.copy()} for _ in range(2))
            plus[name][i] += eps
            minus[name][i] -= eps
            fd[i] = (np_mean_loss(ref, plus, w, [0, 2, 3]) - np_mean_loss(ref, minus, w, [0, 2, 3])) / (2 * eps)
        assert np.abs(fd).max() > 1e-3, name  # every parameter block really moves the loss
        np.testing.assert_allclose(grads[name], fd, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("scale", [10.0, 0.1], ids=["clipped", "untouched"])
def test_optimizer_clips_global_norm_then_sgd(tiny_cfg, key, scale: float) -> None:
    theta, lr = 0.7, 0.3
    tx = make_optimizer(tiny_cfg(clip=theta, lr=lr))
    params = {"a": jnp.ones((3, 4)), "b": jnp.ones(5)}
    k_a, k_b = jax.random.split(key)
    grads = {"a": scale * jax.random.normal(k_a, (3, 4)), "b": scale * jax.random.normal(k_b, (5,))}
    updates, _ = tx.update(grads, tx.init(params), params)
    g = np.concatenate([np.asarray(grads["a"], np.float64).ravel(), np.asarray(grads["b"], np.float64).ravel()])
    u = np.concatenate([np.asarray(updates["a"]).ravel(), np.asarray(updates["b"]).ravel()])
    norm = np.linalg.norm(g)
    want = -lr * g * (theta / norm if norm > theta else 1.0)  # d2l's clip_gradients, then an SGD step
    np.testing.assert_allclose(u, want, rtol=1e-5)
    assert np.linalg.norm(u) / lr <= theta * (1 + 1e-6)
    np.testing.assert_allclose(u @ g / (np.linalg.norm(u) * norm), -1.0, rtol=1e-6)  # direction kept


def test_perplexity_is_exp_of_loss() -> None:
    for loss in (0.0, 0.5, 1.7, 3.3322):
        assert perplexity(loss) == pytest.approx(math.exp(loss), rel=1e-12)
    assert perplexity(1000.0) == math.inf
    # two steps: loss sums 30 and 10 over 10 and 10 tokens -> token-weighted mean 2.0; one skipped step
    stats = {"loss_sum": np.array([30.0, 10.0, 0.0]), "tokens": np.array([10.0, 10.0, 0.0]),
             "skipped_steps": np.array([0.0, 0.0, 1.0])}
    r = record({"epoch": 3, "step": 9}, stats, 2.5, 4.0, 1000, "d2l-windows")
    assert r["train_ppl"] == pytest.approx(math.exp(2.0)) and r["val_ppl"] == pytest.approx(math.exp(2.5))
    assert r["epoch"] == 3 and r["tokens_per_s"] == 250 and r["skipped_steps"] == 1
    # a metric of one's own: a NAME_sum is the token-weighted mean train_NAME, any other key a summed count
    r = record({"epoch": 1}, {**stats, "norm_sum": np.array([5.0, 15.0, 0.0]), "clipped": np.array([1.0, 0, 1])},
               2.5, 4.0, 1000, "d2l-windows")
    assert r["train_norm"] == pytest.approx(1.0) and r["clipped"] == 2.0


def test_perplexity_of_nan_loss_is_nan() -> None:
    """A diverged run reports nan, not an overflow's inf."""
    assert math.isnan(perplexity(math.nan))


def test_evaluate_is_token_weighted_mean_over_all_windows(key, ref, tiny_cfg) -> None:
    model, params, _, _ = small_problem(key)
    tokens = jax.random.randint(jax.random.fold_in(key, 9), (14,), 0, 5)
    idx = jnp.array([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 0]])
    mask = jnp.array([[True] * 4, [True] * 4, [True, True, False, False]])
    steps = Steps(model, make_optimizer(tiny_cfg()), 4)  # windows of 5: tokens[i:i + 5], i < 10
    with jax.default_matmul_precision("highest"):
        got = float(jax.jit(steps.evaluate)(params, tokens, idx, mask))
    windows = np.lib.stride_tricks.sliding_window_view(np.asarray(tokens), 5)
    want = np_mean_loss(ref, ref.flat(params), windows, list(range(10)))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_masked_partial_batch_weighs_like_d2l(tiny_cfg, tiny_corpus) -> None:
    """A padded + masked batch of 5 real windows takes the same step as the 5 windows alone."""
    cfg = tiny_cfg()
    model = build_model(cfg, len(tiny_corpus.vocab))
    tx = make_optimizer(cfg)
    step = jax.jit(Steps(model, tx, cfg.num_steps).step)
    train = jnp.asarray(tiny_corpus.part_tokens("train"))
    real = jnp.array([5, 17, 3, 250, 99], jnp.int32)
    with jax.default_matmul_precision("highest"):
        want, sn_want, _ = step(init_state(model, tx, 0), jnp.int32(0), train, real, jnp.ones(5, bool))
        for pad in (0, 7):
            idx = jnp.concatenate([real, jnp.full(11, pad, jnp.int32)])
            got, sn, _ = step(init_state(model, tx, 0), jnp.int32(0), train, idx, jnp.arange(16) < 5)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9), got.params, want.params)
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), sn, sn_want)
    assert float(sn_want["tokens"]) == 5 * cfg.num_steps
    assert int(got.step) == 1


@pytest.fixture(scope="module")
def corpus_500():
    """500 training windows: batches of 128 leave a partial last batch of 116."""
    return load_corpus(None, 8, 500, 256)


@pytest.mark.parametrize("kind", ["scratch", pytest.param("concise", marks=pytest.mark.slow)])
def test_fused_and_per_step_agree(tiny_cfg, corpus_500, kind: str) -> None:
    cfg = tiny_cfg(model=kind, num_train=500)
    model = build_model(cfg, len(corpus_500.vocab))
    fused, h_fused = fit(cfg, corpus_500, model)
    stepped, h_stepped = fit(cfg, corpus_500, model, per_step=True)
    assert int(fused.step) == int(stepped.step) == 4
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), fused.params, stepped.params)
    for k in ("train_loss", "val_loss"):
        np.testing.assert_allclose(h_fused[0][k], h_stepped[0][k], rtol=1e-5)


def test_chunking_does_not_change_training_and_loss_falls(tiny_cfg, tiny_corpus) -> None:
    """Three chunks of 1 epoch train exactly like one chunk of 3; the loss falls every epoch."""
    model = build_model(tiny_cfg(), len(tiny_corpus.vocab))
    chunks = list(fit_chunks(tiny_cfg(epochs=3, save_every=1), tiny_corpus, model))
    a, hist_a = chunks[-1].state, [r for c in chunks for r in c.records[0]]
    b, hist_b = fit(tiny_cfg(epochs=3, save_every=3), tiny_corpus, model)
    assert [[r["epoch"] for r in c.records[0]] for c in chunks] == [[1], [2], [3]] and all(c.save for c in chunks)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), a.params, b.params)
    train = [r["train_loss"] for r in hist_a]
    val = [r["val_loss"] for r in hist_a]
    assert train[0] < math.log(28)  # below a uniform guess over the vocab
    assert all(x > y for x, y in zip(train, train[1:])) and val[-1] < val[0]
    assert [r["val_loss"] for r in hist_b] == pytest.approx(val, rel=1e-5)
    for r in hist_a:
        assert r["train_ppl"] == pytest.approx(math.exp(r["train_loss"]))
