"""Many runs as one program (`--seeds`): each replica trains as the solo run with its seed (the same data
order and dropout masks; any difference is float rounding), a group's directory holds each replica's run
directory, a stopped group resumes exactly, and the spread it reports is Student's t interval."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import max_diff

import jaxrnn
from jaxrnn import checkpoint, rundir
from jaxrnn.errors import ConfigError
from jaxrnn.run import Group, seed_list
from jaxrnn.spread import Spread, mean_record, median_index


@pytest.mark.parametrize("changes", [
    dict(),
    # by steps, the state carried across rounds (slow)
    pytest.param(dict(steps=12, eval_every=4, save_every=4, batching="sequential", batch_size=32),
                 marks=pytest.mark.slow),
    # dropout: each replica draws the masks the solo run on one device does (a run over two devices draws
    # each device's rows' masks from a key of its own) (slow)
    pytest.param(dict(dropout=0.3, embed=8, layers=2), marks=pytest.mark.slow),
], ids=["epochs", "steps-sequential", "dropout"])
def test_each_replica_trains_as_its_solo_run(tiny_cfg, tiny_corpus, changes: dict) -> None:
    """Replica K against `train` with seed K: the same records (the data order is the same, so the token
    counts are, and the losses agree to float rounding) and params within float32 rounding of the solo
    run's all-reduce over the two devices (a replica trains on one); 3 seeds on 2 devices pad to 4."""
    cfg = tiny_cfg(epochs=2, **changes)
    group = jaxrnn.train(cfg, corpus=tiny_corpus, progress=False, seeds=(4, 0, 7))
    assert isinstance(group, Group) and group.seeds == (4, 0, 7)
    for replica, seed in zip(group.replicas, group.seeds):
        solo = jaxrnn.train(cfg.replace(seed=seed, devices=1 if cfg.dropout else None), corpus=tiny_corpus,
                            progress=False)
        assert replica.cfg == cfg.replace(seed=seed) and replica.done == solo.done
        assert max_diff(replica.params, solo.params) < 1e-6, seed
        for r, s in zip(replica.history, solo.history):
            assert r["step"] == s["step"] and math.isclose(r["val_loss"], s["val_loss"], rel_tol=1e-6)
            assert math.isclose(r["train_loss"], s["train_loss"], rel_tol=1e-6)
    others = [max_diff(a.params, b.params) for a, b in zip(group.replicas, group.replicas[1:])]
    assert min(others) > 1e-3  # the seeds differ, so do the replicas


def test_a_group_directory_holds_a_run_directory_per_replica(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    cfg = tiny_cfg(epochs=2)
    group = jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=2)
    saved = json.loads((tmp_path / "g" / rundir.GROUP).read_text())
    assert saved == {"seeds": [0, 1], "replicas": ["seed-0", "seed-1"]}
    for seed, replica in zip((0, 1), group.replicas):
        d = tmp_path / "g" / f"seed-{seed}"
        assert replica.run_dir == d and jaxrnn.Config.load(d / rundir.CONFIG) == cfg.replace(seed=seed)
        assert [r["epoch"] for r in rundir.read_metrics(d)] == [1, 2] and checkpoint.steps(d) == [1, 2]
        loaded = jaxrnn.load(d)  # a replica is a run as any other
        assert max_diff(loaded.params, replica.params) == 0
        assert (d / "samples.txt").read_text().count("\n") == 2
    summary = group.summary()
    ppl = [t.val_ppl for t in group.replicas]
    assert summary["val_ppl"]["mean"] == pytest.approx(np.mean(ppl)) and summary["seeds"] == [0, 1]
    assert summary["median_seed"] == group.seeds[int(np.argmin(ppl))]  # of two, the lower
    with pytest.raises(jaxrnn.errors.JaxrnnError, match="already holds a run; pass --resume"):
        jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=2)
    with pytest.raises(jaxrnn.errors.JaxrnnError, match="already holds a run; pass --resume"):
        jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False)  # a solo run into a group's


def test_a_stopped_group_resumes_exactly(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    """Stopped after its first checkpoint (a time budget), resumed: every replica ends bit for bit as the
    group left alone; one replica's last checkpoint missing (a stop between the replicas' saves): that
    replica catches up, laid out as in the group, and ends bit for bit too, the others' kept."""
    cfg = tiny_cfg(epochs=3)
    whole = jaxrnn.train(cfg, out=tmp_path / "whole", corpus=tiny_corpus, progress=False, seeds=2)
    jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=2, time_budget=1e-9)
    assert checkpoint.steps(tmp_path / "g" / "seed-1") == [1]
    resumed = jaxrnn.resume(tmp_path / "g", progress=False)
    assert isinstance(resumed, Group)
    for a, b in zip(whole.replicas, resumed.replicas):
        assert max_diff(a.params, b.params) == 0 and len(b.history) == 3
    checkpoint.set_aside(tmp_path / "g" / "seed-1", 3)  # as if the stop came between the two replicas' saves
    kept = (tmp_path / "g" / "seed-0" / "checkpoints" / "3").stat().st_mtime_ns
    jaxrnn.resume(tmp_path / "g", progress=False)
    assert (tmp_path / "g" / "seed-0" / "checkpoints" / "3").stat().st_mtime_ns == kept
    assert checkpoint.steps(tmp_path / "g" / "seed-1")[-1] == 3  # made again
    again = jaxrnn.resume(tmp_path / "g", progress=False)  # finished: restored, not trained
    for a, b in zip(whole.replicas, again.replicas):
        assert max_diff(a.params, b.params) == 0


def test_a_damaged_replica_catches_up_while_the_others_keep_their_checkpoints(tiny_cfg, tiny_corpus, tmp_path: Path,
                                                                               capfd) -> None:
    """Stopped after epoch 2 of 4, replica seed-1's checkpoint 2 damaged: resumed, seed-1 trains from its
    checkpoint 1 to 2 alone (and says so), laid out as in the group, seed-0 and seed-2 keep their checkpoint
    2, then all go on as one program; every replica ends bit for bit as the group left alone, and every
    history is whole."""
    cfg = tiny_cfg(epochs=4)
    whole = jaxrnn.train(cfg, corpus=tiny_corpus, progress=False, seeds=3)
    seen = []

    def stop_after_two(record: dict) -> None:
        seen.append(record)
        if len(seen) == 3:  # epoch 3's record, before its checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=stop_after_two, seeds=3)
    assert checkpoint.steps(tmp_path / "g" / "seed-1") == [1, 2]
    for leaf in (tmp_path / "g" / "seed-1" / "checkpoints" / "2").rglob("*"):
        if leaf.is_file() and leaf.stat().st_size > 100 and "metrics" not in str(leaf):
            leaf.write_bytes(b"\0" * leaf.stat().st_size)  # every array's bytes zeroed
    kept = (tmp_path / "g" / "seed-0" / "checkpoints" / "2").stat().st_mtime_ns
    capfd.readouterr()
    resumed = jaxrnn.resume(tmp_path / "g", progress=False)
    err = capfd.readouterr().err
    assert f"jaxrnn: replica {tmp_path / 'g' / 'seed-1'} restarts from epoch 1, its latest checkpoint that " \
           "restores; the others keep epoch 2" in err
    assert (tmp_path / "g" / "seed-0" / "checkpoints" / "2").stat().st_mtime_ns == kept
    assert (tmp_path / "g" / "seed-1" / "damaged" / "2").is_dir()
    for a, b in zip(whole.replicas, resumed.replicas):
        assert max_diff(a.params, b.params) == 0 and [r["epoch"] for r in b.history] == [1, 2, 3, 4]
        assert [r["epoch"] for r in rundir.read_metrics(b.run_dir)] == [1, 2, 3, 4]
        assert b.history[-1]["val_loss"] == a.history[-1]["val_loss"]


@pytest.mark.parametrize(("seeds", "words"), [
    (0, "--seeds 0 trains no replica"), (-2, "--seeds -2 trains no replica"),
    ((0, 3, 0), "--seeds names seed 0 twice"), ((1, -1), "whole numbers >= 0"), ((), "whole numbers >= 0"),
])
def test_bad_seeds_are_refused(tiny_cfg, seeds, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        seed_list(tiny_cfg(), seeds)


def test_seeds_count_from_the_configs_seed(tiny_cfg) -> None:
    assert seed_list(tiny_cfg(seed=5), 3) == (5, 6, 7) and seed_list(tiny_cfg(), [2, 9]) == (2, 9)


def test_the_spread_is_students_t_interval_of_the_mean() -> None:
    s = Spread.of([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.303: 2 +- 4.303 / sqrt(3)
    assert (s.n, s.mean, s.std) == (3, 2.0, 1.0)
    assert s.lo == pytest.approx(2 - 4.303 / math.sqrt(3)) and s.hi == pytest.approx(2 + 4.303 / math.sqrt(3))
    big = Spread.of([float(x) for x in range(100)])  # t(99) ~ 1.984
    assert (big.hi - big.mean) * 10 / big.std == pytest.approx(1.984, abs=2e-3)
    assert Spread.of([7.0]) == Spread(1, 7.0, 0.0, 7.0, 7.0)
    assert f"{s}" == "2.00 ± 1.00 (3 seeds, 95% interval -0.48-4.48)"
    assert median_index([3.0, 1.0, 2.0]) == 2 and median_index([4.0, 1.0, 3.0, 2.0]) == 3


def test_a_groups_progress_record_is_the_mean_with_the_spread() -> None:
    records = [{"epoch": 3, "val_loss": 1.0, "train_loss": 2.0, "val_protocol": "windows"},
               {"epoch": 3, "val_loss": 2.0, "train_loss": 4.0, "val_protocol": "windows"}]
    r = mean_record(records)
    assert r["epoch"] == 3 and r["val_loss"] == 1.5 and r["train_loss"] == 3.0 and r["val_protocol"] == "windows"
    assert r["val_loss_std"] == pytest.approx(math.sqrt(0.5))


def test_the_cli_trains_a_group_and_prints_its_spread(call, tmp_path: Path) -> None:
    """`jaxrnn train --seeds 2`: the result line's spread and the median replica's sample; `--json`: every
    replica's result and the summary; `--resume` of the finished group restores it."""
    flags = ["--epochs", "2", "--no-curves", "--hidden", "16", "--num-train", "512", "--num-val", "256",
             "--batch-size", "128", "--num-steps", "8", "--save-every", "1", "--seeds", "2"]
    proc = call(["train", *flags, "--out", "g"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = proc.stdout.strip()
    m = re.fullmatch(r"perplexity (\d+\.\d\d) ± (\d+\.\d\d) \(2 seeds, 95% interval (-?\d+\.\d\d)-(\d+\.\d\d)\), "
                     r"'(time traveller.{50})'", line)
    assert m, line
    ppl = [jaxrnn.load(tmp_path / "g" / f"seed-{s}").val_ppl for s in (0, 1)]
    assert float(m.group(1)) == pytest.approx(np.mean(ppl), abs=0.006)
    assert float(m.group(2)) == pytest.approx(np.std(ppl, ddof=1), abs=0.006)
    median = jaxrnn.load(tmp_path / "g" / f"seed-{int(np.argmin(ppl))}")
    assert m.group(5) == median.predict("time traveller", 50)
    proc = call(["train", *flags, "--out", "j", "--json", "--quiet"], tmp_path)
    result = json.loads(proc.stdout.splitlines()[-1])
    assert [r["seed"] for r in result["replicas"]] == [0, 1] and result["summary"]["val_ppl"]["n"] == 2
    assert result["perplexity"] == pytest.approx(np.mean([r["perplexity"] for r in result["replicas"]]))
    proc = call(["train", "--resume", "g"], tmp_path)
    assert proc.returncode == 0 and "finished all 2 epochs already" in proc.stderr and proc.stdout.strip() == line


def test_runs_and_plot_see_a_group_as_one(call, tiny_cfg, tiny_corpus, tmp_path: Path, monkeypatch) -> None:
    """`jaxrnn runs` shows a group as one row (the mean ± std of its replicas' best), `--all` its replicas
    too; `jaxrnn plot GROUP` draws the mean over the seeds with their band."""
    group = jaxrnn.train(tiny_cfg(epochs=2), out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=2)
    rows = call(["runs", "."], tmp_path).stdout.splitlines()
    best = [t.val_ppl for t in group.replicas]
    assert len(rows) == 2 and rows[1].split()[0] == "g" and rows[1].endswith("scratch, 2 seeds")
    assert f"{np.mean(best):.2f} ± {np.std(best, ddof=1):.2f}" in rows[1]
    listed = [r.split()[0] for r in call(["runs", ".", "--all"], tmp_path).stdout.splitlines()[1:]]
    assert listed == ["g", "g/seed-0", "g/seed-1"]
    from matplotlib.axes import Axes

    bands = []
    monkeypatch.setattr(Axes, "fill_between", lambda self, x, lo, hi, **kw: bands.append((list(lo), list(hi))))
    assert call(["plot", "g", "--out", "band.png"], tmp_path).returncode == 0
    assert (tmp_path / "band.png").read_bytes().startswith(b"\x89PNG") and len(bands) == 2  # train and val
    val = [[r["val_ppl"] for r in t.history] for t in group.replicas]
    assert bands[1] == ([min(c) for c in zip(*val)], [max(c) for c in zip(*val)])


def test_fewer_replicas_than_devices_stay_data_parallel(tiny_cfg, tiny_corpus) -> None:
    """One seed on two devices: the replica is split by its batch as the solo run is (no padding copy),
    so it draws the solo run's dropout masks and ends within float rounding of it."""
    assert jax.device_count() == 2
    cfg = tiny_cfg(epochs=2, dropout=0.3, embed=8)
    group = jaxrnn.train(cfg, corpus=tiny_corpus, progress=False, seeds=(5,))
    solo = jaxrnn.train(cfg.replace(seed=5), corpus=tiny_corpus, progress=False)
    assert max_diff(group.replicas[0].params, solo.params) < 1e-6
    assert group.replicas[0].history[-1]["val_loss"] == pytest.approx(solo.history[-1]["val_loss"], rel=1e-6)


def test_force_leaves_nothing_of_what_was_there(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    """A group forced into a solo run's directory, or over a larger group: no stale run or replica stays."""
    cfg = tiny_cfg()
    jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False)
    jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=3, force=True)
    assert not (tmp_path / "g" / rundir.CONFIG).exists() and not (tmp_path / "g" / "checkpoints").exists()
    jaxrnn.train(cfg, out=tmp_path / "g", corpus=tiny_corpus, progress=False, seeds=(1,), force=True)
    assert sorted(p.name for p in (tmp_path / "g").glob("seed-*")) == ["seed-1"]
    assert len(rundir.group_histories(tmp_path / "g")) == 1
