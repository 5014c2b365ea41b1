"""tools/d2l_baseline.py, tools/seed_vs_d2l.py and tools/race.py: their --help and bad input, and the pure
pieces (result parsing, ratios, the tables, the numpy loader) without installing d2l or running a peer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
sys.path.insert(0, str(TOOLS))  # as for a script run from there: the tools import their shared toolcli.py




svd = load_tool("seed_vs_d2l")
d2lb = load_tool("d2l_baseline")
race = load_tool("race")


def run_tool(*args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run a tool with this Python (the venv's) from the repo root."""
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


SCRIPTS = sorted(p.relative_to(ROOT).as_posix() for d in ("tools", "experiments") for p in (ROOT / d).glob("*.py")
                 if 'if __name__ == "__main__":' in p.read_text())


def test_every_script_is_listed() -> None:
    """Every tool and experiment with a main is in SCRIPTS (the modules they share are not)."""
    assert len(SCRIPTS) == 16
    assert {"tools/ablate.py", "tools/budget_report.py", "experiments/rnn_scratch.py"} <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_script_answers_help(call, script: str) -> None:
    """Imports resolve and the arguments parse: a script that has rotted fails here (in this process)."""
    proc = call([ROOT / script, "--help"], ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage:"), proc.stdout


@pytest.mark.parametrize("argv", [["tools/d2l_baseline.py", "train", "--help"],
                                  ["tools/d2l_baseline.py", "reference", "--help"], ["tools/race.py", "--help"]])
def test_help(argv):
    proc = run_tool(*argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: tools/")


def test_ablate_runs_a_tiny_grid(call, tmp_path: Path) -> None:
    """tools/ablate.py end to end on one cell of its grid, one epoch: a row with train tokens/s."""
    out = tmp_path / "rows.json"
    proc = call([ROOT / "tools/ablate.py", "--models", "scratch", "--unroll", "1", "--precision", "highest",
                 "--epochs", "1", "--json-out", out], ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(out.read_text())
    assert len(rows) == 1 and rows[0]["tokens_per_s"] > 0, rows


@pytest.mark.parametrize("argv, problem", [
    (["tools/seed_vs_d2l.py", "--models", "scratch,rnn"], "comma-separated list of scratch, concise"),
    (["tools/seed_vs_d2l.py", "--epochs", "0"], "must be at least 1"),
    (["tools/seed_vs_d2l.py", "--json-out", "/nonexistent-dir/rows.json"], "its directory does not exist"),
    (["tools/d2l_baseline.py", "train", "lstm"], "invalid choice"),
    (["tools/serve_load.py", "--run", "/nonexistent-run"], "is not a run directory"),
    (["tools/d2l_baseline.py", "train", "scratch", "--data", "/nonexistent/timemachine.txt"], "does not exist"),
])
def test_bad_input_exits_2_with_one_error_line(argv, problem, tmp_path):
    # an empty cache: a d2l install, were one attempted, would show up here
    proc = run_tool(*argv, env={**os.environ, "XDG_CACHE_HOME": str(tmp_path)})
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("jaxrnn: error: ") and problem in last and "; " in last
    assert proc.stdout == "" and not any(tmp_path.iterdir())


@pytest.mark.parametrize("line, ppl, sample", [
    ("perplexity 7.2, 'time traveller and the time'", 7.2, "time traveller and the time"),
    ("perplexity 11.4, \"it's the time\"", 11.4, "it's the time"),  # repr picks double quotes
    ("perplexity 16.6, 'time traveller     '", 16.6, "time traveller     "),
    ("perplexity 7.25, time traveller unquoted", 7.25, "time traveller unquoted"),
])
def test_parse_jaxrnn_result(line, ppl, sample):
    stdout = f"some earlier line\n{line}\n"
    assert svd.parse_jaxrnn_result(stdout) == (ppl, sample)


@pytest.mark.parametrize("stdout", ["", "epoch 3 of 5\n", "perplexity high, 'x'\n"])
def test_parse_jaxrnn_result_refuses_other_lines(stdout):
    with pytest.raises(svd.ToolError, match="last stdout line"):
        svd.parse_jaxrnn_result(stdout)


def test_parse_d2l_result():
    line = json.dumps({"impl": "d2l-jax-scratch", "val_ppl": 7.18, "sample": "time traveller the"})
    assert svd.parse_d2l_result(f"{line}\n")["val_ppl"] == 7.18
    with pytest.raises(svd.ToolError, match="not JSON"):
        svd.parse_d2l_result("Traceback ...\n")


def made_up_rows() -> list:
    R = svd.Row
    rows = [R("scratch", "d2l", "python tools/d2l_baseline.py train scratch", [39.2], 7.18, "a"),
            R("scratch", "cold", "jaxrnn train --model scratch", [12.6], 7.2, "b"),
            R("scratch", "warm", "jaxrnn train --model scratch", [10.5], 7.2, "b"),
            R("concise", "d2l", "python tools/d2l_baseline.py train concise", [40.0, 37.1, 36.0], 7.37),
            R("concise", "cold", "jaxrnn train --model concise", [13.9, 14.5, 13.0], 7.2, "c"),
            R("concise", "warm", "jaxrnn train --model concise", [12.2, 11.0, 12.9], 7.2, "c")]
    svd.set_ratios(rows)
    return rows


def test_ratios_are_medians_over_d2l_of_the_same_model():
    rows = made_up_rows()
    assert [r.wall_s for r in rows] == [39.2, 12.6, 10.5, 37.1, 13.9, 12.2]
    assert rows[0].ratio == rows[3].ratio == 1.0
    assert rows[1].ratio == pytest.approx(12.6 / 39.2) and rows[2].ratio == pytest.approx(10.5 / 39.2)
    assert rows[4].ratio == pytest.approx(13.9 / 37.1) and rows[5].ratio == pytest.approx(12.2 / 37.1)


def test_ratio_without_a_d2l_row_is_left_out():
    rows = [svd.Row("scratch", "cold", "jaxrnn train --model scratch", [12.6], 7.2)]
    svd.set_ratios(rows)
    assert rows[0].ratio is None
    last = svd.format_table(rows).splitlines()[-1]
    assert last == "| `jaxrnn train --model scratch`, empty compile cache | 12.6 s | - | 7.2 |"


def test_format_table():
    assert svd.format_table(made_up_rows()).splitlines() == [
        "| command | wall | x d2l | val ppl |",
        "| --- | ---: | ---: | ---: |",
        "| d2l's JAX code, scratch (`python tools/d2l_baseline.py train scratch`) | 39.2 s | 1.00x | 7.18 |",
        "| `jaxrnn train --model scratch`, empty compile cache | 12.6 s | 0.32x | 7.2 |",
        "| same, warm compile cache | 10.5 s | 0.27x | 7.2 |",
        "| d2l's JAX code, concise (`python tools/d2l_baseline.py train concise`) | 37.1 s (40.0 / 37.1 / 36.0) | 1.00x"
        " | 7.37 |",
        "| `jaxrnn train --model concise`, empty compile cache | 13.9 s (13.9 / 14.5 / 13.0) | 0.37x | 7.2 |",
        "| same, warm compile cache | 12.2 s (12.2 / 11.0 / 12.9) | 0.33x | 7.2 |",
    ]


def test_numpy_loader_is_d2ls_tf_loader_in_numpy():
    """Train: every window once per pass, reshuffled each pass, last batch kept; validation in order."""
    X, Y = np.arange(50).reshape(25, 2), np.arange(25)
    train = d2lb.NumpyLoader((X, Y), batch_size=10, shuffle=True)
    assert len(train) == 3
    passes = [list(train), list(train)]
    for batches in passes:
        assert [len(y) for _, y in batches] == [10, 10, 5]
        ys = np.concatenate([y for _, y in batches])
        assert sorted(ys) == list(range(25)) and np.array_equal(np.concatenate([x for x, _ in batches]), X[ys])
    assert not np.array_equal(np.concatenate([y for _, y in passes[0]]), np.concatenate([y for _, y in passes[1]]))
    val = d2lb.NumpyLoader((X, Y), batch_size=10, shuffle=False)
    assert np.array_equal(np.concatenate([y for _, y in val]), Y)


def test_d2l_is_installed_in_the_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert d2lb.d2l_dir() == tmp_path / "jaxrnn" / "d2l-1.0.3"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert d2lb.d2l_dir() == Path.home() / ".cache" / "jaxrnn" / "d2l-1.0.3"


@pytest.mark.slow
def test_reference_reproduces_the_committed_json(tmp_path):
    """d2l's own preprocessing and windowing give tests/data/d2l_timemachine.json (installs d2l: network)."""
    out = tmp_path / "ref.json"
    proc = run_tool("tools/d2l_baseline.py", "reference", "--out", str(out), timeout=600)
    assert proc.returncode == 0, proc.stderr
    new, old = json.loads(out.read_text()), json.loads((ROOT / "tests" / "data" / "d2l_timemachine.json").read_text())
    assert list(new) == list(old)
    assert {k: v for k, v in new.items() if k != "source"} == {k: v for k, v in old.items() if k != "source"}


def test_race_refuses_a_directory_without_nanogpt(tmp_path: Path) -> None:
    proc = run_tool("tools/race.py", "--nanogpt", str(tmp_path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines()[-1] == (f"jaxrnn: error: {tmp_path} lacks nanoGPT's train.py, model.py, "
                                            "configurator.py, config/train_shakespeare_char.py, "
                                            "data/shakespeare_char/prepare.py; pass --nanogpt with a clone of "
                                            "karpathy/nanoGPT")


def test_race_table_shows_both_on_one_protocol() -> None:
    nano = {"wall_s": 78.1, "val_loss": 1.9012, "estimate": 1.8857, "sample": "First Citizen:\nWhat say"}
    jax = {"wall_s": 77.5, "val_loss": 1.5987, "estimate": 1.61, "sample": "First Citizen:\nI am"}
    lines = race.table(nano, jax).splitlines()
    assert lines[0].startswith("| | whole process | val loss (blocks of 64, whole val part)")
    assert lines[2] == "| nanoGPT, its README's CPU recipe | 78.1 s | 1.9012 | 1.8857 | `\\nWhat say` |"
    assert lines[3].startswith("| jaxrnn, --preset shakespeare-cpu | 77.5 s | 1.5987 | 1.6100 |")


TINY_FLAGS = ["--hidden", "16", "--num-train", "512", "--num-val", "256", "--batch-size", "128", "--num-steps", "8",
              "--save-every", "1"]


@pytest.mark.slow
def test_seeds_bench_times_a_group_against_solo_processes(tmp_path: Path) -> None:
    """tools/seeds_bench.py on a tiny model, of seeds and of a sweep: its row and JSON hold both wall times and
    both record times."""
    out = tmp_path / "seeds.json"
    proc = run_tool("tools/seeds_bench.py", "--seeds", "2", "--epochs", "2", "--json-out", str(out), "--",
                    *TINY_FLAGS, timeout=300)
    assert proc.returncode == 0, proc.stderr
    row = json.loads(out.read_text())
    assert row["seeds"] == 2 and row["wall_ratio"] == pytest.approx(row["group_wall_s"] / row["solo_wall_s"])
    assert row["record_ratio"] == pytest.approx(row["group_record_s"] / row["solo_record_s"])
    assert row["solo_record_s"] > 0 and row["runs"] == 2
    assert proc.stdout.count("\n") == 3 and proc.stdout.splitlines()[2].startswith("| 2 | ")
    swept = run_tool("tools/seeds_bench.py", "--seeds", "2", "--grid", "lr=0.5,2", "--epochs", "2", "--json-out",
                     str(out), "--", *TINY_FLAGS, timeout=300)  # a sweep: 2 points x 2 seeds against 4 processes
    assert swept.returncode == 0, swept.stderr
    row = json.loads(out.read_text())
    assert row["runs"] == 4 and row["grid"] == ["lr=0.5,2"] and swept.stdout.splitlines()[2].startswith("| 4 | ")
    assert len(row["solo_val_loss"]) == len(row["group_val_loss"]) == 4
    assert row["group_val_loss"] == pytest.approx(row["solo_val_loss"], rel=1e-4)  # each replica as its solo run


@pytest.mark.slow
def test_replica_layouts_times_each_layout() -> None:
    proc = run_tool("tools/replica_layouts.py", "--replicas", "2", "--epochs", "1", timeout=300)
    assert proc.returncode == 0, proc.stderr
    speed, memory = proc.stdout.split("\n\n")
    rows = [line for line in speed.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 4 and rows[0].endswith("| 1.00 |") and "(--seeds)" in rows[-1]
    tokens, own = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) bytes", memory))
    (r, each, args, _, want), = [[int(x.replace(",", "")) for x in line.strip("| ").split(" | ")]
                                 for line in memory.splitlines()[3:]]  # 2 replicas: one a device
    assert (r, each) == (2, 1) and want == tokens + own and abs(args - want) < 64  # the tokens once, its own arrays
