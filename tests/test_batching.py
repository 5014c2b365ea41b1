"""Sequential partitioning with the hidden state carried (truncated BPTT), any-corpus preprocessing,
and train/validation/test splits by fraction."""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import cli
from jaxrnn.batching import eval_plan, eval_protocol, sequential_plan, steps_per_epoch
from jaxrnn.data import UNK, load_corpus, split_spans
from jaxrnn.errors import ConfigError, DataError
from jaxrnn.models import build_model
from jaxrnn.training import evaluate_tokens, fit

SEQ = dict(batching="sequential", batch_size=16, lr=1e-30)  # 512 windows: 16 streams of 32, 4 batches of 8 steps


@pytest.mark.parametrize("seed, epoch", [(0, 0), (0, 1), (3, 7)])
def test_sequential_plan_rows_continue_each_other(seed: int, epoch: int) -> None:
    n, B, T = 512, 16, 8
    starts, mask = sequential_plan(seed, epoch, n, B, T)
    assert starts.shape == (4, 16) == mask.shape and mask.all()
    offset = starts[0, 0]
    assert 0 <= offset < T and offset == np.random.default_rng([seed, epoch]).integers(T)
    np.testing.assert_array_equal(np.diff(starts, axis=0), T)  # batch i + 1 picks up where batch i stopped
    np.testing.assert_array_equal(np.diff(starts, axis=1), n // B)  # the streams are n // B windows apart
    assert starts.max() <= n - 1  # every window lies inside the training part
    np.testing.assert_array_equal(sequential_plan(seed, epoch, n, B, T)[0], starts)  # a function of (seed, epoch)
    assert steps_per_epoch("sequential", n, B, T) == 4 and steps_per_epoch("random", n, B, T) == 32


def test_offsets_differ_between_epochs() -> None:
    assert len({int(sequential_plan(0, e, 512, 16, 8)[0][0, 0]) for e in range(20)}) > 1


def np_stream_loss(ref, params, tokens: np.ndarray, starts_NxB: np.ndarray, T: int) -> float:
    """Mean cross-entropy of each row's whole stream (N * T inputs) run in one go from a zero state, in
    float64: what carrying the state across the N batches must equal."""
    first = starts_NxB[0]
    stream_BxL = np.stack([tokens[s : s + starts_NxB.shape[0] * T + 1] for s in first])
    flat = ref.flat(params)
    logits, _ = ref.lm_forward(flat, stream_BxL[:, :-1], np.zeros((len(first), flat["W_hh"].shape[0])))
    return float(ref.cross_entropy(logits, stream_BxL[:, 1:]).mean())


@pytest.mark.parametrize("per_step", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_carried_state_equals_one_unbroken_pass_per_stream(tiny_cfg, tiny_corpus, ref, per_step: bool) -> None:
    """With a learning rate too small to move the params, each epoch's training loss is the float64 loss
    of every stream read from its start in one pass: the state crosses batch boundaries, and each
    epoch starts again from zeros at its own offset. Random batching gives a different loss."""
    cfg = tiny_cfg(epochs=2, sigma=0.5, **SEQ)  # weights large enough for the state to matter
    model = build_model(cfg, len(tiny_corpus.vocab))
    with jax.default_matmul_precision("highest"):
        state, hist = fit(cfg, tiny_corpus, model, per_step=per_step)
    tokens = tiny_corpus.part_tokens("train")
    for e, record in enumerate(hist):
        starts, _ = sequential_plan(cfg.seed, e, 512, 16, 8)
        want = np_stream_loss(ref, state.params, tokens, starts, 8)
        np.testing.assert_allclose(record["train_loss"], want, rtol=2e-6)
        # reset at the epoch start: the batches alone, each from zeros, give another number
        alone = np.mean([np_stream_loss(ref, state.params, tokens, starts[i:i + 1], 8) for i in range(4)])
        assert abs(alone - want) > 1e-3
    assert int(state.step) == 8 and hist[0]["tokens_per_s"] > 0


def test_flax_lstm_carries_its_pair_state(tiny_cfg, tiny_corpus) -> None:
    """The concise LSTM's (c, h) state crosses batches too: its epoch loss is one forward over each stream."""
    cfg = tiny_cfg(cell="lstm", impl="flax", **SEQ)
    model = build_model(cfg, len(tiny_corpus.vocab))
    with jax.default_matmul_precision("highest"):
        state, hist = fit(cfg, tiny_corpus, model)
        starts, _ = sequential_plan(cfg.seed, 0, 512, 16, 8)
        stream = jnp.asarray(np.stack([tiny_corpus.part_tokens("train")[s : s + 33] for s in starts[0]]))
        logits, _ = model.forward(state.params, stream[:, :-1], model.init_state(16))
        want = -jnp.take_along_axis(jax.nn.log_softmax(logits), stream[:, 1:, None], -1).mean()
    np.testing.assert_allclose(hist[0]["train_loss"], float(want), rtol=2e-6)


def test_sequential_needs_streams_of_a_batch(tiny_cfg, tiny_corpus) -> None:
    cfg = tiny_cfg(batching="sequential")  # 512 windows in 128 streams of 4 < 8 steps
    with pytest.raises(DataError, match=r"streams of 4, fewer than --num-steps 8; use --batch-size 64 or less"):
        fit(cfg, tiny_corpus, build_model(cfg, len(tiny_corpus.vocab)))


# --- any corpus, split by fraction ---------------------------------------------------------------------


TEXT = "First Line: Hello, World!\nZweite Zeile — grüße.\n" * 40


@pytest.fixture
def raw_file(tmp_path: Path) -> Path:
    p = tmp_path / "any.txt"
    p.write_text(TEXT, encoding="utf-8")
    return p


def test_no_preprocessing_keeps_case_punctuation_newlines_and_unicode(raw_file: Path) -> None:
    c = load_corpus(raw_file, 8, 100, 50, preprocessing="none")
    assert set(c.vocab.idx_to_token) == set(TEXT) | {UNK}
    assert c.vocab.decode(c.tokens) == TEXT
    assert c.vocab.decode(c.train[0]) == TEXT[:9]
    d2l = load_corpus(raw_file, 8, 100, 50)
    assert set(d2l.vocab.decode(d2l.tokens)) <= set("abcdefghijklmnopqrstuvwxyz ")


@pytest.mark.parametrize("fractions", [(0.8, 0.1, 0.1), (0.5, 0.5, 0.0), (0.6, 0.3, 0.1)])
def test_split_parts_are_consecutive_and_share_no_window(fractions) -> None:
    n, T = 1000, 8
    spans = split_spans(n, T, fractions)
    cuts = [int(c * n + 1e-6) for c in np.cumsum((0, *fractions))]  # the first f * n tokens, as nanoGPT cuts
    for (part, (first, count)), a, b in zip(spans.items(), cuts[:-1], cuts[1:]):
        assert first == a and count == max(b - a - T, 0), part  # each part's windows end inside it
    c = load_corpus(None, T, preprocessing="d2l", split=fractions)
    total = len(c.tokens)
    last_token = {p: c.spans[p][0] + c.spans[p][1] + T for p in ("train", "val", "test") if c.spans[p][1]}
    assert last_token["train"] <= c.spans["val"][0]
    if fractions[2]:
        assert last_token["val"] <= c.spans["test"][0] and last_token["test"] == total
        np.testing.assert_array_equal(c.test[-1], c.tokens[-T - 1:])


def test_split_part_without_a_window_is_refused(raw_file: Path) -> None:
    with pytest.raises(DataError, match="the val and test part of --split 0.98,0.01,0.01 holds no window of 33"):
        load_corpus(raw_file, 32, preprocessing="none", split=(0.98, 0.01, 0.01))


@pytest.mark.parametrize("split", [(0.8, 0.1), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (0.9, 0.0, 0.1), (1.2, -0.1, -0.1)])
def test_bad_split_is_refused(tiny_cfg, split) -> None:
    with pytest.raises(ConfigError, match="--split must be three fractions"):
        tiny_cfg(split=split)


def test_cli_trains_on_any_text_with_a_test_split(raw_file: Path, tmp_path: Path, capsys) -> None:
    """A raw (case, punctuation, newlines, non-ASCII) corpus split 80/10/10 trains with sequential batches,
    prints the test part's perplexity and bpc, and `eval --part test` prints the same numbers."""
    out = tmp_path / "run"
    flags = ["--data", str(raw_file), "--preprocessing", "none", "--split", "0.8,0.1,0.1", "--batching",
             "sequential", "--num-steps", "8", "--batch-size", "8", "--hidden", "16", "--epochs", "2", "--no-curves",
             "--optimizer", "adam", "--lr", "0.01", "--unroll", "1"]
    assert cli.main(["train", *flags, "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    test_line, final = lines
    assert final.startswith("perplexity ")
    ppl, bpc, loss = map(float, re.fullmatch(r"test perplexity (.+), bpc (.+), loss (.+)", test_line).groups())
    assert math.isclose(bpc, math.log2(ppl), rel_tol=1e-2) and math.isclose(loss, math.log(ppl), rel_tol=1e-2)
    assert 1 < ppl < 40
    assert cli.main(["eval", "--run", str(out), "--part", "test"]) == 0
    assert capsys.readouterr().out.strip() == test_line.removeprefix("test ")
    assert cli.main(["train", "--split", "0.8,0.1,0.1", "--num-train", "100", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("jaxrnn: error: --split sets the train and validation parts "
                                                       "by fraction; drop --num-train/--num-val")


# --- evaluation protocols ---------------------------------------------------------------------------


def test_eval_plans_read_each_token_once_or_as_streams() -> None:
    """'blocks' starts a window every num_steps (each target token once), 'd2l-windows' every token,
    'stream' cuts the part into batch_size rows that continue from batch to batch."""
    n, B, T = 100, 4, 8
    idx, mask = eval_plan("blocks", n, B, T)
    np.testing.assert_array_equal(idx[mask], np.arange(0, n, T))
    idx, mask = eval_plan("d2l-windows", n, B, T)
    np.testing.assert_array_equal(idx[mask], np.arange(n))
    idx, mask = eval_plan("stream", n, B, T)
    assert idx.shape == (3, 4) and mask.all()  # 4 streams of 25 windows: 3 stretches of 8 each
    np.testing.assert_array_equal(idx[0], [0, 25, 50, 75])
    np.testing.assert_array_equal(np.diff(idx, axis=0), T)
    with pytest.raises(DataError, match="--eval stream cuts the 100 windows .* into 32 streams of 3, fewer than "
                                        "--num-steps 8; use --eval windows or --batch-size 12 or less"):
        eval_plan("stream", n, 32, T)
    assert eval_protocol("windows", None) == "d2l-windows" and eval_protocol("windows", (0.8, 0.1, 0.1)) == "blocks"
    assert eval_protocol("stream", None) == "stream"


@pytest.mark.parametrize("how", ["windows", "stream"])
def test_split_parts_evaluate_as_the_float64_reference(tiny_cfg, ref, raw_file: Path, how: str) -> None:
    """A --split part's loss: non-overlapping windows each from zeros ('windows'), or each row's whole
    stream in one pass ('stream'), as float64 numpy computes them."""
    cfg = tiny_cfg(data=str(raw_file), preprocessing="none", split=(0.8, 0.1, 0.1), batch_size=4, sigma=0.5,
                   eval=how)
    corpus = load_corpus(raw_file, cfg.num_steps, preprocessing="none", split=cfg.split)
    model = build_model(cfg, len(corpus.vocab))
    params = model.init(jax.random.key(1))
    tokens, T = np.asarray(corpus.part_tokens("val")), cfg.num_steps
    got = evaluate_tokens(cfg, model, params, tokens)
    flat = ref.flat(params)
    n = len(tokens) - T
    if how == "windows":
        rows = np.stack([tokens[s : s + T + 1] for s in range(0, n, T)])
    else:
        L = n // 4
        rows = np.stack([tokens[r * L : r * L + (L // T) * T + 1] for r in range(4)])
    logits, _ = ref.lm_forward(flat, rows[:, :-1], np.zeros((len(rows), flat["W_hh"].shape[0])))
    assert got == pytest.approx(float(ref.cross_entropy(logits, rows[:, 1:]).mean()), rel=1e-5)


def test_metrics_record_the_protocol_and_bits(tiny_cfg, raw_file: Path) -> None:
    cfg = tiny_cfg(data=str(raw_file), preprocessing="none", split=(0.8, 0.1, 0.1), batch_size=4, eval="stream")
    corpus = load_corpus(raw_file, cfg.num_steps, preprocessing="none", split=cfg.split)
    _, hist = fit(cfg, corpus, build_model(cfg, len(corpus.vocab)))
    assert hist[0]["val_protocol"] == "stream"
    assert hist[0]["val_bpc"] == pytest.approx(hist[0]["val_loss"] / math.log(2))
