"""Training by optimizer steps (`--steps`, `--eval-every`, `--eval-batches`, `--time-budget`): the same data
order as epochs, fixed validation samples, and stops that resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrnn import cli, run, rundir
from jaxrnn.batching import chunk_plan, eval_plan, eval_sample, steps_per_epoch
from jaxrnn.config import Config
from jaxrnn.errors import ConfigError
from jaxrnn.models import build_model
from jaxrnn.training import evaluate_tokens, fit, round_plan

# 512 training windows: 4 random batches of 128 an epoch, or 4 sequential batches (16 streams of 32)
SPE = {"random": 4, "sequential": 4}


def same_params(a, b) -> None:
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("batching", ["random", "sequential"])
def test_round_plans_run_the_epochs_on_into_each_other(tiny_cfg, batching: str) -> None:
    """Steps [a, b) take epoch g // spe's batch g % spe, across epoch boundaries; reset flags mark each
    epoch's first step."""
    cfg = tiny_cfg(batching=batching, batch_size=128 if batching == "random" else 16, steps=9)
    n, spe = 512, SPE[batching]
    assert steps_per_epoch(batching, n, cfg.batch_size, cfg.num_steps) == spe
    idx, mask, reset = round_plan(cfg, n, spe, 1, 8)
    epochs = [chunk_plan(cfg.seed, e, 1, n, cfg.batch_size, batching, cfg.num_steps) for e in range(5)]
    want = np.concatenate([p[0][0] for p in epochs])[1:8]
    np.testing.assert_array_equal(idx, want)
    assert mask.shape == idx.shape and reset.tolist() == [(g % spe) == 0 for g in range(1, 8)]


@pytest.mark.parametrize("batching", [pytest.param("random", marks=pytest.mark.slow), "sequential", "random-big"])
def test_steps_over_whole_epochs_train_as_epochs_do(monkeypatch, tiny_cfg, tiny_corpus, batching: str) -> None:
    """A run of 3 epochs' worth of steps, evaluated and saved at each epoch's end, ends with the params and
    the losses of the 3-epoch run: the same batches in the same order, the state reset alike; also with
    the order of a big part (BIG_PART lowered), which steps compute a slice at a time."""
    if batching == "random-big":
        monkeypatch.setattr("jaxrnn.batching.BIG_PART", 100)
        batching = "random"
    spe = SPE[batching]
    by_epochs = tiny_cfg(epochs=3, batching=batching, batch_size=128 if batching == "random" else 16, sigma=0.5)
    by_steps = by_epochs.replace(steps=3 * spe, eval_every=spe)
    assert by_steps.save_every == spe and by_steps.unit == "step" and by_epochs.unit == "epoch"
    model = build_model(by_epochs, len(tiny_corpus.vocab))
    a, hist_a = fit(by_epochs, tiny_corpus, model)
    b, hist_b = fit(by_steps, tiny_corpus, model)
    same_params(a.params, b.params)
    assert [r["step"] for r in hist_b] == [spe, 2 * spe, 3 * spe] and [r["epoch"] for r in hist_b] == [1.0, 2.0, 3.0]
    for ra, rb in zip(hist_a, hist_b):
        assert (ra["train_loss"], ra["val_loss"]) == (rb["train_loss"], rb["val_loss"])


def test_eval_sample_is_fixed_and_drawn_from_the_part() -> None:
    plan = eval_plan("blocks", 1000, 8, 10)  # 100 window starts, 13 batches
    idx, mask = eval_sample(plan, 3, seed=0, protocol="blocks")
    assert idx.shape == (3, 8) and mask.all()
    assert set(idx.ravel()) <= set(range(0, 1000, 10)) and len(set(idx.ravel())) == 24
    np.testing.assert_array_equal(eval_sample(plan, 3, 0, "blocks")[0], idx)  # the same at every evaluation
    assert not np.array_equal(eval_sample(plan, 3, 1, "blocks")[0], idx)  # a function of the seed
    stream = eval_plan("stream", 1000, 4, 10)
    np.testing.assert_array_equal(eval_sample(stream, 2, 0, "stream")[0], stream[0][:2])  # rows kept whole
    assert eval_sample(plan, None, 0, "blocks")[0] is plan[0]


def test_eval_batches_validate_on_the_sample(tiny_cfg, tiny_corpus, ref) -> None:
    """With --eval-batches 1 the recorded validation loss is the float64 loss of the one sampled batch of
    windows (each from a zero state), not of the whole part."""
    cfg = tiny_cfg(epochs=1, eval_batches=1, sigma=0.5)
    state, hist = fit(cfg, tiny_corpus, build_model(cfg, len(tiny_corpus.vocab)))
    idx, mask = eval_sample(eval_plan("d2l-windows", 256, 128, 8), 1, cfg.seed, "d2l-windows")
    tokens = np.asarray(tiny_corpus.part_tokens("val")).astype(np.int64)
    rows = np.stack([tokens[s:s + 9] for s in idx[0]])
    flat = ref.flat(state.params)
    logits, _ = ref.lm_forward(flat, rows[:, :-1], np.zeros((len(rows), flat["W_hh"].shape[0])))
    assert hist[0]["val_loss"] == pytest.approx(float(ref.cross_entropy(logits, rows[:, 1:]).mean()), rel=1e-5)
    assert hist[0]["val_loss"] != pytest.approx(evaluate_tokens(cfg.replace(eval_batches=None), build_model(
        cfg, len(tiny_corpus.vocab)), state.params, tiny_corpus.part_tokens("val")), rel=1e-6)


@pytest.mark.parametrize("batching", [pytest.param("random", marks=pytest.mark.slow), "sequential"])
def test_time_budget_stops_at_a_checkpoint_and_resume_ends_exactly(tiny_cfg, tmp_path: Path, batching: str) -> None:
    """A spent budget stops the run at its next checkpoint (a result, not an error); resuming goes on and
    ends with the params and metrics of the run left alone. Sequential batching is the harder case (its
    state restarts after each checkpoint); random batching runs in the slow set."""
    cfg = tiny_cfg(batching=batching, batch_size=128 if batching == "random" else 16, steps=9, eval_every=2,
                   save_every=4, sigma=0.5)
    whole = run.train(cfg, out=tmp_path / "whole", progress=False)
    stopped = run.train(cfg, out=tmp_path / "cut", progress=False, time_budget=1e-9)
    assert stopped.done == 4 and [r["step"] for r in stopped.history] == [2, 4]
    resumed = run.resume(tmp_path / "cut", progress=False)
    assert resumed.done == whole.done == 9
    same_params(resumed.params, whole.params)
    def losses(d: str) -> list[tuple]:
        return [(r["step"], r["train_loss"], r["val_loss"]) for r in rundir.read_metrics(tmp_path / d)]

    assert losses("cut") == losses("whole")
    assert [r["step"] for r in rundir.read_metrics(tmp_path / "whole")] == [2, 4, 6, 8, 9]


def test_steps_flags_through_the_cli(tmp_path: Path, capsys) -> None:
    """`--steps --eval-every --time-budget`: progress lines count steps, the result line is printed at the
    budget's checkpoint, --json's result names the step, `runs` shows steps."""
    flags = ["--hidden", "16", "--num-train", "512", "--num-val", "256", "--batch-size", "128", "--num-steps", "8",
             "--unroll", "1", "--no-curves", "--steps", "6", "--eval-every", "2", "--save-every", "2"]
    assert cli.main(["train", *flags, "--time-budget", "0.000001", "--out", str(tmp_path / "r")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("perplexity ") and out.count("\n") == 1
    assert "step 2/6  train ppl" in err and "the time budget of 1e-06 s is spent; stopped after step 2 of 6" in err
    assert cli.main(["train", "--resume", str(tmp_path / "r"), "--json"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert [r["step"] for r in lines[:-1]] == [4, 6] and lines[-1]["step"] == 6 and "epoch" not in lines[-1]
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "6/6 steps" in capsys.readouterr().out


def test_steps_settings_are_checked(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--eval-every counts optimizer steps of a run trained by --steps"):
        Config(eval_every=5)
    with pytest.raises(ConfigError, match="--save-every 5 is not a multiple of --eval-every 2"):
        Config(steps=10, eval_every=2, save_every=5)
    cfg = Config(steps=1000)
    assert (cfg.eval_every, cfg.save_every, cfg.length) == (100, 100, 1000)
    assert Config().replace(steps=50).save_every == 5 and Config(steps=50).replace(steps=None).save_every == 10
    with pytest.raises(ConfigError, match="--per-step is the chapters' loop over epochs"):
        run.train(tiny_cfg(steps=4), out=tmp_path / "r", corpus=tiny_corpus, per_step=True, progress=False)
    assert not (tmp_path / "r").exists()
