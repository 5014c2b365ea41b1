"""`jaxrnn sweep`: the grid as parsed and refused, each point a group whose row is its replicas' spread,
the table best first, and a stopped sweep that goes on where it stopped, ending as one left alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import jaxrnn
from jaxrnn import sweep
from jaxrnn.errors import ConfigError

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


def test_a_sweep_prints_each_points_spread_best_first(call, tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    proc = call(["sweep", *TINY, "--grid", "lr=0.25,2", "--seeds", "2", "--out", "sw"], tmp_path)
    assert proc.returncode == 0, proc.stderr
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
    """Stopped inside its second point (after that group's first checkpoint), run again: the first point is
    read back, the second resumes, and every row is what the sweep left alone gives."""
    cfg, grid = tiny_cfg(epochs=3), {"lr": [0.5, 2.0]}
    whole = sweep.run_sweep(cfg, grid, 2, tmp_path / "whole", progress=False, say=None)
    seen = []

    def stop_in_point_two(record: dict) -> None:
        seen.append(record)
        if len(seen) == 5:  # point 1's records are 1-3; point 2's epoch 2
            raise Stop

    with pytest.raises(Stop):
        sweep.run_sweep(cfg, grid, 2, tmp_path / "sw", progress=stop_in_point_two, say=None)
    assert [r["point"] for r in json.loads((tmp_path / "sw" / "sweep.json").read_text())["rows"]] == [0]
    said = []
    rows = sweep.run_sweep(cfg, grid, 2, tmp_path / "sw", progress=False, say=said.append)
    assert said == ["jaxrnn: sweep point 2 of 2: lr=2.0"]
    assert [r["val_loss"] for r in rows] == [r["val_loss"] for r in whole]
