"""`jaxrnn sweep`: the grid as parsed and refused, each point a group whose row is its replicas' spread,
points that differ by the optimizer's values trained as one program (each replica as its solo run), the
table best first, and a stopped sweep that goes on where it stopped, ending as one left alone."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import max_diff

import jaxrnn
from jaxrnn import sweep
from jaxrnn.errors import ConfigError, Stopped
from jaxrnn.run import train_groups
from jaxrnn.training import learning_rate

TINY = ["--epochs", "2", "--no-curves", "--hidden", "16", "--num-train", "512", "--num-val", "256", "--batch-size",
        "128", "--num-steps", "8", "--save-every", "1"]


def test_the_grid_takes_each_settings_own_type() -> None:
    grid = sweep.parse_grid(["lr=0.5,1", "--hidden=16,32", "window=8", "tie=false,true", "cell=rnn,gru"])
    assert grid == {"lr": [0.5, 1.0], "hidden": [16, 32], "num_steps": [8], "tie": [False, True],
                    "cell": ["rnn", "gru"]}
    assert sweep.parse_grid(["split=0.8,0.1,0.1;0.9,0.1,0"]) == {"split": [(0.8, 0.1, 0.1), (0.9, 0.1, 0.0)]}


@pytest.mark.parametrize(("specs", "words"), [
    ([], "a sweep needs at least one --grid"),
    (["lr"], "is not NAME=V1,V2"),
    (["lr="], "has an empty value"),
    (["learning_rate=1,2"], "--grid learning_rate is not a setting of jaxrnn train"),
    (["out=a,b"], "--grid out is the sweep's directory, not a setting to sweep"),
    (["data=a.txt,b.txt"], "--grid data is the corpus, not a setting to sweep"),
    (["seed=1,2"], r"--grid seed is the seeds \(--seeds\)"),
    (["hidden=16,big"], "--grid hidden value 'big' is not a whole number"),
    (["lr=1,1"], "--grid lr repeats a value"),
    (["lr=1", "lr=2"], "--grid lr is given twice"),
])
def test_a_bad_grid_is_refused(specs: list[str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        sweep.parse_grid(specs)


def test_a_grid_point_that_cannot_train_is_refused_before_any_trains(tiny_cfg) -> None:
    with pytest.raises(ConfigError, match="--grid hidden 0: must be a positive integer"):
        sweep.points(tiny_cfg(), {"hidden": [16, 0]})
    with pytest.raises(ConfigError, match="the grid point tie=True cannot train: --tie shares"):
        sweep.points(tiny_cfg(), {"tie": [True]})


@pytest.mark.parametrize("changes", [
    dict(),  # SGD at a constant rate: the rate and clip as the program's arguments
    # Adam with a warmed-up cosine schedule and L2 decay (a stage of its own): each point's own rate and decay
    pytest.param(dict(optimizer="adam", lr=1e-2, schedule="cosine", warmup=3, weight_decay=1e-3),
                 marks=pytest.mark.slow),
], ids=["sgd", "adam-cosine-decay"])
def test_points_that_differ_by_the_optimizers_values_train_as_one_program(tiny_cfg, tiny_corpus, changes) -> None:
    """Two points (another lr, clip, weight decay and init scale) times two seeds, one program: each replica as the solo
    run of its config (the same records; params within float32 rounding of the solo run's all-reduce over
    the two devices), and the points' replicas differ."""
    cfg = tiny_cfg(epochs=2, **changes)
    wd = cfg.weight_decay
    pts = [cfg.replace(lr=0.5 * cfg.lr), cfg.replace(lr=2 * cfg.lr, clip=0.25, weight_decay=3 * wd, sigma=0.05)]
    groups = train_groups(pts, [None, None], (0, 5), tiny_corpus, progress=False)
    assert [g.seeds for g in groups] == [(0, 5), (0, 5)]
    for point, group in zip(pts, groups):
        for replica in group.replicas:
            assert replica.cfg == point.replace(seed=replica.cfg.seed)
            solo = jaxrnn.train(replica.cfg, corpus=tiny_corpus, progress=False)
            assert max_diff(replica.params, solo.params) < 1e-6
            for r, s in zip(replica.history, solo.history, strict=True):
                assert r["step"] == s["step"] and r["val_loss"] == pytest.approx(s["val_loss"], rel=1e-6)
                assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-6)
    assert max_diff(groups[0].replicas[0].params, groups[1].replicas[0].params) > 1e-3  # same seed, other lr


@pytest.mark.parametrize(("impl", "other", "tol"), [
    ("scratch", dict(dropout=0.3), 0.0),  # a replica's dropout is its solo run's bit for bit
    pytest.param("flax", dict(dropout=0.3), 0.0, marks=pytest.mark.slow),
    # the warm-up's and rate's arithmetic folds fewer constants inside the program: float32 rounding
    pytest.param("scratch", dict(dropout=0.3, warmup=5, lr=2e-2), 1e-6, marks=pytest.mark.slow),
], ids=["dropout", "dropout-flax", "warmup-lr"])
def test_points_that_differ_by_dropout_and_warm_up_train_as_one_program(tiny_cfg, tiny_corpus, impl, other, tol
                                                                        ) -> None:
    """Another dropout rate (and warm-up and rate) inside one program: each replica is the solo run of its config
    on one device (a replica trains on one device, drawing its masks as one device does)."""
    cfg = tiny_cfg(epochs=2, impl=impl, embed=8, optimizer="adam", lr=1e-2, schedule="cosine", warmup=2, dropout=0.1)
    pts = [cfg, cfg.replace(**other)]
    groups = train_groups(pts, [None, None], (0, 3), tiny_corpus, progress=False)
    for point, group in zip(pts, groups):
        for replica in group.replicas:
            solo = jaxrnn.train(replica.cfg.replace(devices=1), corpus=tiny_corpus, progress=False)
            assert replica.cfg == point.replace(seed=replica.cfg.seed)
            assert max_diff(replica.params, solo.params) <= tol, (point.dropout, replica.cfg.seed)
            assert [r["val_loss"] for r in replica.history] == pytest.approx([r["val_loss"] for r in solo.history],
                                                                             rel=tol, abs=0)
    assert max_diff(groups[0].replicas[0].params, groups[1].replicas[0].params) > 1e-3


def test_the_learning_rate_is_optaxs_schedule_bit_for_bit(tiny_cfg) -> None:
    """`learning_rate` (written out so that the rate and warm-up may be a replica's traced values) against optax's
    own joined linear warm-up and cosine decay, at every step of a run and past its end, in both forms."""
    steps = jnp.arange(0, 90, dtype=jnp.int32)
    for changes in (dict(schedule="cosine", warmup=7), dict(schedule="cosine"), dict(warmup=10)):
        cfg = tiny_cfg(epochs=4, lr=3e-3, **changes)  # 4 epochs of 16 steps
        main = (optax.constant_schedule(cfg.lr) if cfg.schedule == "constant"
                else optax.cosine_decay_schedule(cfg.lr, 64 - cfg.warmup))
        want = (optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, cfg.warmup), main], [cfg.warmup])
                if cfg.warmup else main)
        want_S = jax.jit(jax.vmap(want))(steps)
        np.testing.assert_array_equal(jax.jit(jax.vmap(learning_rate(cfg, 16)))(steps), want_S)
        traced = jax.jit(lambda s, lr, w: jax.vmap(learning_rate(cfg, 16, lr, w))(s))  # noqa: B023
        got = traced(steps, jnp.float32(cfg.lr), jnp.int32(cfg.warmup))
        np.testing.assert_array_equal(got, want_S, err_msg=str(changes))


@pytest.mark.parametrize(("changes", "words"), [
    (dict(hidden=24), "differ in hidden, which changes the program"),
    (dict(dropout=0.1), "differ in whether there is dropout, which changes the program"),
    (dict(warmup=3), "differ in whether there is warm-up"),  # a schedule's step count in the optimizer state
    (dict(weight_decay=0.1), "differ in whether there is weight decay"),  # with SGD a stage only where any
])
def test_points_that_change_the_program_are_refused_as_one(tiny_cfg, tiny_corpus, changes, words) -> None:
    with pytest.raises(ConfigError, match=words):
        train_groups([tiny_cfg(), tiny_cfg(**changes)], [None, None], 1, tiny_corpus, progress=False)


def test_a_replica_that_diverges_is_named_by_its_seed_and_settings(tiny_cfg, tiny_corpus) -> None:
    pts = [tiny_cfg(epochs=1), tiny_cfg(epochs=1, lr=1e9)]
    with pytest.raises(jaxrnn.JaxrnnError, match=r"the training loss of the replica with seed 0, lr=1000000000.0 "
                       r"became .* at epoch 1, step \d+ \(no checkpoint was saved before it\); lower --lr"):
        train_groups(pts, [None, None], 2, tiny_corpus, progress=False)


def test_a_signal_says_the_sweep_goes_on_with_the_same_command(tiny_cfg, tmp_path: Path, monkeypatch) -> None:
    def stopped(*args, **kwargs):  # SIGINT after the program's epoch 1 checkpoint
        raise Stopped(2, 1, tmp_path / "sw" / "point-0", "epoch")

    monkeypatch.setattr(sweep, "train_groups", stopped)
    with pytest.raises(Stopped) as caught:
        sweep.run_sweep(tiny_cfg(), {"lr": [0.5, 2.0]}, 1, tmp_path / "sw", progress=False, say=None)
    assert str(caught.value) == (f"stopped by SIGINT after epoch 1, its checkpoint saved; resume with the same "
                                 f"'jaxrnn sweep ... --out {tmp_path / 'sw'}'")


def test_the_sweep_trains_each_program_once(tiny_cfg) -> None:
    cfgs = sweep.points(tiny_cfg(), {"hidden": [16, 24], "lr": [0.5, 2.0], "clip": [1.0, 0.5], "sigma": [0.01, 0.1]})
    assert sweep.programs(cfgs) == [list(range(8)), list(range(8, 16))]
    cfgs = sweep.points(tiny_cfg(), {"weight_decay": [0.0, 1e-3, 1e-2], "dropout": [0.0, 0.1, 0.3]})
    assert sweep.programs(cfgs) == [[0], [1, 2], [3, 6], [4, 5, 7, 8]]  # by whether there is decay, and dropout
    warm = sweep.points(tiny_cfg(), {"warmup": [0, 5, 10]})
    assert sweep.programs(warm) == [[0], [1, 2]]
    adamw = sweep.points(tiny_cfg(optimizer="adamw"), {"weight_decay": [0.0, 1e-2]})
    assert sweep.programs(adamw) == [[0, 1]]  # AdamW's decay is one stage whatever its value


def test_a_sweep_prints_each_points_spread_best_first(call, tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    proc = call(["sweep", *TINY, "--grid", "lr=0.25,2", "--seeds", "2", "--out", "sw"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "jaxrnn: sweep points 1, 2 of 2 as one program: lr=0.25 | lr=2.0" in proc.stderr
    head, *lines = proc.stdout.splitlines()
    assert head.split()[:3] == ["point", "lr", "val"] and [line.split()[:2] for line in lines] == \
        [["point-1", "2.0"], ["point-0", "0.25"]]  # lr 2 learns faster in 2 epochs: best first
    saved = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert saved["plan"]["grid"] == {"lr": [0.25, 2.0]} and saved["plan"]["seeds"] == [0, 1]
    for row in saved["rows"][1:]:  # the best point, trained again as a group of its own
        group = jaxrnn.train(tiny_cfg(epochs=2, lr=row["settings"]["lr"]), corpus=tiny_corpus, progress=False, seeds=2)
        losses = [t.history[-1]["val_loss"] for t in group.replicas]
        assert row["val_loss"]["mean"] == pytest.approx(np.mean(losses), rel=1e-6)
        assert row["val_loss"]["std"] == pytest.approx(np.std(losses, ddof=1), rel=1e-3, abs=1e-7)
    assert (tmp_path / "sw" / "sweep.png").read_bytes().startswith(b"\x89PNG")
    again = call(["sweep", *TINY, "--grid", "lr=0.25,2", "--seeds", "2", "--out", "sw"], tmp_path)
    assert again.stdout == proc.stdout and "sweep point" not in again.stderr  # finished: read back
    other = call(["sweep", *TINY, "--grid", "lr=0.5", "--out", "sw"], tmp_path)
    assert other.returncode == 2 and other.stderr.splitlines()[-1] == \
        "jaxrnn: error: sw holds another sweep (or something else); pass --force to replace it, or --out NEW_DIR"


class Stop(Exception):
    pass


@pytest.mark.slow
def test_a_stopped_sweep_goes_on_where_it_stopped(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    """Two programs (by hidden size) of two points each (by lr), stopped inside the second program (after its
    first checkpoint), run again: the first program's points are read back, the second's resume as one
    program, and every row is what the sweep left alone gives."""
    cfg, grid = tiny_cfg(epochs=3), {"hidden": [16, 24], "lr": [0.5, 2.0]}
    whole = sweep.run_sweep(cfg, grid, 2, tmp_path / "whole", progress=False, say=None)
    seen = []

    def stop_in_program_two(record: dict) -> None:
        seen.append(record)
        if len(seen) == 5:  # program 1's records are 1-3; program 2's epoch 2
            raise Stop

    with pytest.raises(Stop):
        sweep.run_sweep(cfg, grid, 2, tmp_path / "sw", progress=stop_in_program_two, say=None)
    assert [r["point"] for r in json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]] == [0, 1]
    said = []
    rows = sweep.run_sweep(cfg, grid, 2, tmp_path / "sw", progress=False, say=said.append)
    assert said == ["jaxrnn: sweep points 3, 4 of 4 as one program: hidden=24 lr=0.5 | hidden=24 lr=2.0"]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in whole]
