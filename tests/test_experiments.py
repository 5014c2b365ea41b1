"""The experiment scripts, run as a user runs them (small settings): what each prints, and the
checks that make it more than a smoke test."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import load_module

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
RUNS = {
    "rnn_scratch": ["--epochs", "1", "--hidden", "8"],
    "rnn_concise": ["--epochs", "1", "--hidden", "8", "--plot", "{tmp}/concise.png"],
    "overfit": ["--hidden", "64", "--num-train", "300", "--epochs", "8", "--lr", "0.01", "--dropout", "0.3",
                "--plot", "{tmp}/overfit.png"],
    "compare_cells": ["--budget-hidden", "16", "--epochs", "2", "--cells", "rnn", "gru", "--layers", "2", "--seeds",
                      "3", "--json-out", "{tmp}/cells.json", "--plot", "{tmp}/cells.png"],
    "sine_autoregressive": ["--steps", "300", "--plot", "{tmp}/sine.png"],
}


# The scratch chapter's script (tiny settings) and the sine experiment (no corpus) run by default, in this
# process; overfit and compare_cells train for about a minute on 2 cores together, so they are `slow`
# (python -m pytest -m slow tests/test_experiments.py) and run as child processes side by side, with the
# concise chapter's script (its model trains by default through the CLI, test_cli.py).
SLOW = {"overfit", "compare_cells", "rnn_concise"}


def _argv(name: str, tmp: Path) -> list[str]:
    return [str(EXPERIMENTS / f"{name}.py"), *(a.replace("{tmp}", str(tmp)) for a in RUNS[name])]


@pytest.fixture(scope="module")
def ran(call, tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    tmp = tmp_path_factory.mktemp("experiments")
    return {name: call(_argv(name, tmp), tmp) for name in sorted(set(RUNS) - SLOW)}, tmp


@pytest.fixture(scope="module")
def ran_slow(run_python, tmp_path_factory) -> tuple[dict[str, subprocess.CompletedProcess], Path]:
    tmp = tmp_path_factory.mktemp("experiments-slow")
    with ThreadPoolExecutor(len(SLOW)) as pool:
        futures = {name: pool.submit(run_python, _argv(name, tmp), tmp) for name in SLOW}
        return {name: f.result() for name, f in futures.items()}, tmp


def out(ran, name: str) -> str:
    proc = ran[0][name]
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout


@pytest.mark.parametrize("name", ["rnn_scratch", pytest.param("rnn_concise", marks=pytest.mark.slow)])
def test_chapter_scripts_end_with_perplexity_and_text(request, name: str) -> None:
    lines = out(request.getfixturevalue("ran_slow" if name in SLOW else "ran"), name).splitlines()
    assert re.fullmatch(r"epoch 1, train_ppl \d+\.\d\d, val_ppl \d+\.\d\d", lines[-3]), lines
    assert re.fullmatch(r"perplexity \d+\.\d", lines[-2]) and lines[-1].startswith("'time traveller"), lines


@pytest.mark.slow
def test_overfit_reports_validation_rising_while_training_falls(ran_slow) -> None:
    lines = out(ran_slow, "overfit").splitlines()
    pattern = (r"(no dropout|dropout 0\.3): best val ppl [\d.]+ at epoch (\d+) \(train [\d.]+\); "
               r"epoch 8: train ([\d.]+), val ([\d.]+); overfit: (yes|no)")
    found = [re.fullmatch(pattern, line) for line in lines]
    assert len(lines) == 2 and all(found), lines
    plain = found[0]
    assert plain.group(1) == "no dropout" and plain.group(5) == "yes"  # 300 windows: memorised within 8 epochs
    assert int(plain.group(2)) < 8 and float(plain.group(3)) < float(plain.group(4))
    assert (ran_slow[1] / "overfit.png").stat().st_size > 10_000


@pytest.mark.slow
def test_compare_cells_gives_each_cell_the_largest_hidden_within_the_budget(ran_slow) -> None:
    text = out(ran_slow, "compare_cells")
    budget = int(re.search(r"budget: (\d+) parameters", text).group(1))
    assert budget == 28 * 16 + 16 * 16 + 16 + 16 * 28 + 28  # the 1-layer tanh RNN at hidden 16
    rows = json.loads((ran_slow[1] / "cells.json").read_text())
    assert [(r["cell"], r["layers"]) for r in rows] == [("rnn", 2), ("gru", 2)]
    V = 28

    def params(cell: str, layers: int, H: int) -> int:  # d2l's formulas, counted by hand
        G, extra = (1, 0) if cell == "rnn" else (3, H)  # the GRU's b_hn
        first = G * (V * H + H * H + H) + extra
        return first + (layers - 1) * (G * (2 * H * H + H) + extra) + H * V + V

    for r in rows:
        assert r["params"] == params(r["cell"], r["layers"], r["hidden"]) <= budget
        assert params(r["cell"], r["layers"], r["hidden"] + 1) > budget
        final, best = r["val_ppl"], r["best_val_ppl"]  # each a spread over the 3 seeds
        assert final["n"] == best["n"] == 3 and best["mean"] <= final["mean"] and final["lo"] < final["mean"]
        assert r["sample"].startswith("time traveller")
    assert sum(line.startswith("| ") for line in text.splitlines()) == 2 + len(rows)


def test_sine_linear_baseline_reaches_the_noise_floor(ran) -> None:
    """One step ahead the linear AR model's test error is the noise variance (0.04) plus a little;
    errors grow with the horizon, for both models."""
    rows = [line.split("|")[1:4] for line in out(ran, "sine_autoregressive").splitlines()
            if re.match(r"\| \d+ \|", line)]
    k, lin, rnn = ([float(c) for c in col] for col in zip(*rows))
    assert k == [1, 4, 16, 64]
    assert 0.035 < lin[0] < 0.055 and lin == sorted(lin) and rnn[-1] > rnn[0]
    assert (ran[1] / "sine.png").stat().st_size > 10_000


def test_compare_cells_sizes_the_slstm_in_whole_heads() -> None:
    """An sLSTM's width splits into its heads, so the budget's hidden size is the largest multiple of them
    that fits: its parameters within the budget, one more head's worth over it."""
    import jaxrnn

    cc = load_module(EXPERIMENTS / "compare_cells.py")
    budget = cc.count_params(jaxrnn.Config(hidden=64), 28)  # a 1-layer tanh RNN of 64
    for heads in (4, 3):
        cfg = jaxrnn.Config(cell="slstm", cell_options={"heads": heads})
        H = cc.hidden_for(cfg, 28, budget)
        assert H % heads == 0 and cc.count_params(cfg.replace(hidden=H), 28) <= budget
        assert cc.count_params(cfg.replace(hidden=H + heads), 28) > budget


@pytest.mark.parametrize("losses, step, want", [
    ({0.006: 1.9, 0.012: 1.7, 0.024: 1.8}, 2.0, None),  # the best inside: nothing further
    ({0.006: 1.9, 0.012: 1.8, 0.024: 1.7}, 2.0, 0.048),  # the highest: one step higher
    ({0.006: 1.6, 0.012: 1.8, 0.024: 1.9}, 2.0, 0.003),  # the lowest: one step lower
    ({0.006: 1.9, 0.012: 1.8, 0.024: 1.7, 0.048: 1.75}, 2.0, None),  # extended, and the edge passed
    ({0.01: 1.9, 0.03: 1.8}, 3.0, 0.09),
])
def test_compare_cells_sweeps_past_a_best_at_its_edge(losses: dict, step: float, want) -> None:
    cc = load_module(EXPERIMENTS / "compare_cells.py")
    swept = [{"lr": lr, "val_loss": {"mean": v}} for lr, v in losses.items()]
    assert cc.beyond(swept, step) == want


@pytest.mark.parametrize("losses, extend, want", [
    ({0.006: 1.9, 0.012: 1.7, 0.024: 1.8}, 2, True),  # the best inside
    ({0.006: 1.9, 0.012: 1.8, 0.024: 1.7}, 2, False),  # the best at the edge, not yet extended
    ({0.006: 1.9, 0.012: 1.8, 0.024: 1.7}, 0, True),  # ... where no extension is asked for
    ({0.006: 1.9, 0.012: 1.8, 0.024: 1.7, 0.048: 1.6, 0.096: 1.5}, 2, True),  # extended as far as allowed
])
def test_compare_cells_keeps_a_sweep_this_command_would_end_with(losses: dict, extend: int, want: bool) -> None:
    cc = load_module(EXPERIMENTS / "compare_cells.py")
    args = cc.parse_args(["--race", "100", "--extend", str(extend)])
    assert cc.settled([{"lr": lr, "val_loss": {"mean": v}} for lr, v in losses.items()], args) is want


@pytest.mark.parametrize("flags, each, want", [
    (["--per-program", "2"], 1, [[0.1, 0.2], [0.3]]),  # rates (or seeds) two to a program, the last alone
    (["--per-program", "2"], 2, [[0.1], [0.2], [0.3]]),  # each rate with two seeds fills a program
    (["--per-program", "4"], 1, [[0.1, 0.2, 0.3]]),
])
def test_compare_cells_trains_runs_in_programs_of_per_program(flags: list, each: int, want: list) -> None:
    cc = load_module(EXPERIMENTS / "compare_cells.py")
    assert cc.in_programs([0.1, 0.2, 0.3], cc.parse_args(["--race", "100", *flags]), each) == want


def test_compare_cells_sets_aside_a_budget_raced_in_another_shape() -> None:
    """A race.json from before shapes were kept raced each budget in its preset alone: the budgets whose shape
    has settings over the preset since are set aside whole (rows and sweeps, nothing lost) and run in their own
    directory; the others stay as they are."""
    cc = load_module(EXPERIMENTS / "compare_cells.py")
    short, long = {"preset": "shakespeare-cpu"}, cc.race_shape(600)
    assert cc.race_shape(100) == short and long["preset"] == "shakespeare-10min" and len(long) > 1
    assert cc.race_dir(100, short) == "100s" and cc.race_dir(600, long) != "600s"
    rows = {"100": [{"cell": "gru"}], "600": [{"cell": "gru"}]}
    kept = {"plan": {}, "budgets": json.loads(json.dumps(rows)), "sweeps": {"600": {"lstm": [{"lr": 0.01}]}}}
    assert cc.set_aside(kept, [100, 600]) == ["600"]
    assert kept["budgets"] == {"100": rows["100"]} and kept["sweeps"] == {}
    assert kept["superseded"] == [{"budget_s": 600, "shape": {"preset": "shakespeare-10min"}, "rows": rows["600"],
                                   "sweeps": {"lstm": [{"lr": 0.01}]}}]
    assert kept["shapes"] == {"100": short, "600": long}
    assert cc.set_aside(kept, [100, 600]) == [] and len(kept["superseded"]) == 1  # the same shape again: kept
    base = cc.race_base("lstm", long, cc.parse_args(["--race", "600"]))
    assert (base.cell, base.impl, base.layers, base.optimizer) == ("lstm", "scratch", 2, "adamw")
    assert base.weight_decay == long["weight_decay"] > 0


@pytest.mark.slow
def test_compare_cells_races_each_cell_for_its_solo_time(run_python, tmp_path) -> None:
    """`--race`: each cell's steps are its measured solo rate times the budget, its rate the best of its sweep,
    its row the spread of the seeds there (seed 0 the sweep's run at that rate); the same command again keeps the
    finished cells of race.json."""
    data = str(Path(__file__).parent / "data" / "timemachine.txt")
    argv = [str(EXPERIMENTS / "compare_cells.py"), "--race", "1.5", "--cells", "minlstm", "rnn", "--seeds", "2",
            "--lr-factors", "0.5,2", "--extend", "0", "--calibration-steps", "10", "--data", data, "--out", "race"]
    proc = run_python(argv, tmp_path, timeout=600)  # about a minute alone on 2 cores
    assert proc.returncode == 0, proc.stderr
    saved = json.loads((tmp_path / "race" / "race.json").read_text())
    rows = saved["budgets"]["1.5"]
    for r in rows:
        assert r["steps"] == max(round(1.5 * saved["plan"]["steps_per_s"][r["cell"]]), 10)
        assert r["lr"] == min(r["sweep"], key=lambda s: s["val_loss"]["mean"])["lr"]
        assert {s["lr"] for s in r["sweep"]} == {0.006, 0.024} and r["val_loss"]["n"] == 2
        assert len(r["curves"]) == 2 and r["sample"].startswith("time traveller")  # the corpus' prompt
        # the sweep's two rates one program (two devices), and seed 0 at the best rate is the sweep's run there:
        # only seed 1 trained again
        where = tmp_path / "race" / "1.5s" / r["cell"]
        assert [d.name for d in where.glob("sweep*")] == ["sweep-lr0.006-0.024"]
        seeds = json.loads((where / f"seeds-lr{r['lr']:g}" / "seeds-1" / "sweep.json").read_text())
        assert seeds["plan"]["seeds"] == [1] and set(r["seeds"]) == {"0", "1"}
        assert r["val_loss"]["mean"] == pytest.approx(sum(s["val_loss"] for s in r["seeds"].values()) / 2)
    best = min(rows, key=lambda r: r["val_loss"]["mean"])
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 2 + len(rows) and table[2].startswith(f"| {best['cell']} |")
    assert re.search(rf"best: {best['cell']} \(\d\.\d+-\d\.\d+\); next: \w+ .*, (apart|overlapping)", proc.stdout)
    # race.json carries the comparison to another session or machine: its finished cells, and a cell swept whose
    # seeds are not done (here the last cell's row taken out, its sweep kept): that cell trains its seeds only,
    # the same runs again where its sweep's runs are there
    last = rows.pop()
    saved["sweeps"] = {"1.5": {last["cell"]: last["sweep"]}}
    (tmp_path / "race" / "race.json").write_text(json.dumps(saved))
    where = tmp_path / "race" / "1.5s" / last["cell"]
    for d in where.glob("seeds-lr*"):
        shutil.rmtree(d)
    again = run_python(argv, tmp_path, timeout=600)
    assert again.returncode == 0 and again.stdout == proc.stdout and "sweeping" not in again.stderr
    assert f"{last['cell']}, 1.5 s: lr {last['lr']} is best" in again.stderr
    resaved = json.loads((tmp_path / "race" / "race.json").read_text())
    assert resaved["sweeps"] == {"1.5": {}} and resaved["budgets"]["1.5"][-1]["sweep"] == last["sweep"]
    # race.json alone (no runs beside it): every seed trains at the sweep's best rate
    (tmp_path / "race" / "race.json").write_text(json.dumps(saved))
    shutil.rmtree(tmp_path / "race" / "1.5s")
    alone = run_python(argv, tmp_path, timeout=600)
    assert alone.returncode == 0 and "sweeping" not in alone.stderr, alone.stderr
    row = json.loads((tmp_path / "race" / "race.json").read_text())["budgets"]["1.5"][-1]
    assert (row["cell"], row["lr"], row["val_loss"]["n"]) == (last["cell"], last["lr"], 2)
    seeds = where / f"seeds-lr{last['lr']:g}"
    assert json.loads((seeds / "seeds-0-1" / "sweep.json").read_text())["plan"]["seeds"] == [0, 1]
    assert (tmp_path / "race" / "race-1.5.png").stat().st_size > 0
    # race.json keeps each program's results as it ends: a sweep with one rate done and a seed done at the best
    # rate train the other rate and the other seed only (the kept seed's marked loss stays in the row)
    kept_seed = {**row["seeds"]["0"], "val_loss": 9.0, "curve": row["curves"][0]}
    saved["sweeps"] = {"1.5": {last["cell"]: [s for s in last["sweep"] if s["lr"] == last["lr"]]}}
    saved["seeds"] = {"1.5": {last["cell"]: {"lr": last["lr"], "runs": {"0": kept_seed}}}}
    (tmp_path / "race" / "race.json").write_text(json.dumps(saved))
    shutil.rmtree(tmp_path / "race" / "1.5s")
    part = run_python(argv, tmp_path, timeout=600)
    assert part.returncode == 0, part.stderr
    other = ({0.006, 0.024} - {last["lr"]}).pop()
    assert f"sweeping lr [{other}]" in part.stderr
    assert sorted(d.name for d in where.iterdir()) == [f"seeds-lr{last['lr']:g}", f"sweep-lr{other:g}"]
    row = json.loads((tmp_path / "race" / "race.json").read_text())["budgets"]["1.5"][-1]
    assert {s["lr"] for s in row["sweep"]} == {0.006, 0.024} and row["seeds"]["0"]["val_loss"] == 9.0
    assert [d.name for d in seeds.iterdir()] == ["seeds-1"] and row["val_loss"]["n"] == 2
