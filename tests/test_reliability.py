"""Never lose work: a run killed or signalled anywhere resumes bit for bit; bad input exits 2 with one line.

Every child process pays JAX's start-up and compile (1-4 s here), so the independent commands of this module
run at once in a few fixtures (`runs`, `commands`, `stopped`, `slow_stopped`) and the tests read their results.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import state_leaves

import jaxrnn
from jaxrnn import checkpoint, cli, faults, rundir, steps
from jaxrnn import run as jrun
from jaxrnn.batching import epoch_order
from jaxrnn.data import load_corpus

MODEL = ["--num-train", "1024", "--num-val", "256", "--batch-size", "128", "--num-steps", "8", "--unroll", "1"]
FLAGS = ["--hidden", "16", "--no-curves", *MODEL]  # curves.png is tested in test_tool.py
RUN_FLAGS = [*FLAGS, "--save-every", "2", "--epochs", "8"]  # 8 steps an epoch; checkpoints at epochs 2, 4, 6, 8
EPOCHS = 8
WORKERS = 3  # child processes at once: 2 CPU cores, and each child waits on I/O and start-up part of the time
ERROR = re.compile(r"^jaxrnn: error: .+; \S")  # the one line: what is wrong; what to do
STOPPED = re.compile(r"^jaxrnn: stopped by (SIG\w+) after epoch (\d+), its checkpoint saved; "
                     r"resume with 'jaxrnn train --resume (.+)'$")
EVAL = re.compile(r"^perplexity (\d+\.\d\d), bpc (\d+\.\d\d\d), loss (\d+\.\d\d\d)$")


def jx(*args: Any) -> list[str]:
    """`python -m jaxrnn.cli ARGS` as a child's argv."""
    return ["-m", "jaxrnn.cli", *map(str, args)]


def parallel(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run the jobs on WORKERS threads; results by name."""
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {k: pool.submit(f) for k, f in jobs.items()}
        return {k: f.result() for k, f in futures.items()}


def metrics(run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl, every line of which must be whole JSON."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def entries(run_dir: Path) -> list[str]:
    """The names in RUN_DIR/checkpoints: epochs, and orbax's `N.orbax-checkpoint-tmp*` while a save is on."""
    try:
        return sorted(os.listdir(run_dir / checkpoint.CHECKPOINTS))
    except FileNotFoundError:
        return []


def complete(run_dir: Path) -> list[int]:
    """The epochs whose checkpoint directory has its final name (orbax renames it there when complete)."""
    return sorted(int(e) for e in entries(run_dir) if e.isdigit())


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (links as their targets), to show that a command changed nothing."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = b"-> " + os.readlink(p).encode()
        elif p.is_file():
            out[str(p.relative_to(root))] = p.read_bytes()
    return out


def assert_user_error(proc: subprocess.CompletedProcess, match: str = "") -> str:
    """Exit 2, nothing on stdout, no traceback, and a last stderr line `jaxrnn: error: ...; what to do`."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert ERROR.match(last), last
    assert re.search(match, last), last
    return last


# The uninterrupted runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The run left alone: what every killed and resumed run must end as, bit for bit."""

    dir: Path
    line: str  # its one stdout line: perplexity X.X, 'time traveller...'
    leaves: dict[str, np.ndarray]
    metrics: list[dict[str, Any]]


@pytest.fixture(scope="session")
def runs(tmp_path_factory, run_python, call) -> dict[str, Path]:
    """Four runs: 'ref' (left alone) in a child process, as the stopped runs below train, and while it
    trains, in this process, 'best' (--lr 10, whose best epoch is not its last), 'other' (--hidden 8: another
    run's checkpoint) and 'reldata' (--data given relative to its own working directory)."""
    work = tmp_path_factory.mktemp("runs")
    (work / "elsewhere").mkdir()
    corpus = Path(os.environ["JAXRNN_DATA_DIR"]) / "timemachine.txt"
    (work / "elsewhere" / "corpus.txt").write_text(corpus.read_text()[:60000])
    cmds = {
        "best": ["train", *FLAGS, "--lr", "10", "--save-every", "1", "--epochs", "5", "--out", work / "best"],
        "other": ["train", "--hidden", "8", *MODEL, "--save-every", "2", "--epochs", "2", "--out", work / "other"],
        "reldata": ["train", *FLAGS, "--epochs", "2", "--data", "corpus.txt", "--out", work / "reldata"],
    }
    cwd = {"reldata": work / "elsewhere"}
    with ThreadPoolExecutor(1) as pool:
        ref = pool.submit(run_python, jx("train", *RUN_FLAGS, "--out", work / "ref"), work)
        procs = {k: call(args, cwd.get(k, work)) for k, args in cmds.items()}
        procs["ref"] = ref.result()
    for k, proc in procs.items():
        assert proc.returncode == 0, (k, proc.stderr)
    (work / "ref.out").write_text(procs["ref"].stdout)
    return {k: work / k for k in procs}


@pytest.fixture(scope="session")
def reference(runs) -> Reference:
    """The reference run, loaded."""
    d = runs["ref"]
    line = (d.parent / "ref.out").read_text()
    assert re.match(r"^perplexity \d+\.\d, 'time traveller.{50}'\n$", line), line
    return Reference(d, line.rstrip("\n"), state_leaves(d), metrics(d))


def assert_same_as_reference(run_dir: Path, proc: subprocess.CompletedProcess, ref: Reference) -> None:
    """The run ended like the reference: same stdout line, metrics, checkpoints and every state bit."""
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ref.line + "\n"
    assert "Traceback" not in proc.stderr, proc.stderr
    got = metrics(run_dir)
    assert [r["epoch"] for r in got] == list(range(1, EPOCHS + 1))  # each epoch exactly once
    for r, want in zip(got, ref.metrics, strict=True):
        assert (r["train_loss"], r["val_loss"], r["skipped_steps"]) == \
            (want["train_loss"], want["val_loss"], want["skipped_steps"]), r["epoch"]
    assert checkpoint.steps(run_dir)[-3:] == [4, 6, 8]
    assert all(e.isdigit() for e in entries(run_dir)), entries(run_dir)  # no half-written save left behind
    leaves = state_leaves(run_dir)
    assert leaves.keys() == ref.leaves.keys()
    for k, want in ref.leaves.items():
        assert leaves[k].dtype == want.dtype and np.array_equal(leaves[k], want), k  # bitwise


def test_reference_run_is_as_configured(reference) -> None:
    """The reference trained 8 epochs of 8 steps and kept the latest three checkpoints."""
    assert [r["epoch"] for r in reference.metrics] == list(range(1, EPOCHS + 1))
    assert checkpoint.steps(reference.dir) == [4, 6, 8]
    assert int(reference.leaves["['step']"]) == EPOCHS * 8


# Killing (kill -9) and signalling a run, then resuming it ---------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """When the running process gets `signals` (`when`) and what it must leave (the latest complete checkpoint)."""

    when: str  # a fault point, 'save:N', 'saving:N' or 'saved:N' (jaxrnn/faults.py: the run signals itself
    # exactly there); or, polled every 0.5 ms, 'startup' (config written), 'metrics:N' (N epochs in metrics.jsonl)
    # or 'ckpt:N' (epoch N's checkpoint has its final name), 'A&B' for both
    expect: int | None = None  # the latest complete checkpoint left; None: wherever a random kill lands
    signals: tuple[int, ...] = (signal.SIGKILL,)
    delay: float = 0.0  # seconds between a polled `when` and the signal

    @property
    def fault(self) -> bool:
        return self.when.partition(":")[0] in faults.POINTS

    def env(self) -> dict[str, str]:
        """The environment that plans a fault point's signals in the process itself."""
        names = ",".join(signal.Signals(s).name for s in self.signals)
        return {faults.ENV: f"{self.when}:{names}"} if self.fault else {}


def reached(run_dir: Path, when: str) -> bool:
    if "&" in when:
        return all(reached(run_dir, part) for part in when.split("&"))
    kind, _, n = when.partition(":")
    if kind == "startup":
        return (run_dir / "metrics.jsonl").exists()
    if kind == "metrics":
        try:
            return (run_dir / "metrics.jsonl").read_bytes().count(b"\n") >= int(n)
        except FileNotFoundError:
            return False
    if kind == "save":
        return any(e.startswith(f"{n}.") and "tmp" in e for e in entries(run_dir))
    assert kind == "ckpt", when
    return n in entries(run_dir)


@dataclass
class Stopped:
    """What one signalled process left: its exit, its output, and the run directory right after."""

    stop: Stop
    proc: subprocess.CompletedProcess
    entries: list[str]
    complete: list[int]
    metrics_text: str


def signal_when(proc: subprocess.Popen, run_dir: Path, stop: Stop, timeout: float = 240) -> Stopped:
    """Wait for a process that signals itself at a fault point; or poll the run directory every 0.5 ms and,
    when `stop.when` holds, send `stop.signals` (5 ms apart)."""
    deadline = time.monotonic() + timeout
    while not stop.fault and proc.poll() is None and time.monotonic() < deadline:
        if reached(run_dir, stop.when):
            time.sleep(stop.delay)
            for i, s in enumerate(stop.signals):
                time.sleep(0.005 if i else 0)
                proc.send_signal(s)  # a no-op once the process has exited
            break
        time.sleep(0.0005)
    out, err = communicate(proc)
    text = (run_dir / "metrics.jsonl").read_text() if (run_dir / "metrics.jsonl").exists() else ""
    return Stopped(stop, subprocess.CompletedProcess(proc.args, proc.returncode, out, err), entries(run_dir),
                   complete(run_dir), text)


def communicate(proc: subprocess.Popen, timeout: float = 240) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return out, err + "\n(test: killed after a timeout: the process hung)"


@dataclass
class Scenario:
    """A run stopped once or more (each resume may be stopped again), then resumed to the end."""

    run_dir: Path
    stopped: list[Stopped] = field(default_factory=list)
    final: subprocess.CompletedProcess | None = None


def stop_and_resume(start_python, work: Path, name: str, stops: list[Stop]) -> Scenario:
    run_dir = work / name
    sc = Scenario(run_dir)
    args = jx("train", *RUN_FLAGS, "--out", run_dir)
    for stop in stops:
        sc.stopped.append(signal_when(start_python(args, work, **stop.env()), run_dir, stop))
        args = jx("train", "--resume", run_dir)
    proc = start_python(args, work)
    out, err = communicate(proc)
    sc.final = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return sc


def resumed_at(stderr: str) -> int:
    """The epoch a resume says it continues from."""
    if m := re.search(r"^jaxrnn: resuming .* at epoch (\d+)\b", stderr, re.M):
        return int(m.group(1))
    assert re.search(rf"finished all {EPOCHS} epochs already", stderr), stderr
    return EPOCHS


def check_scenario(sc: Scenario, ref: Reference) -> None:
    """Every stop left what it should, every resume continued from the latest complete checkpoint, and the
    run ended bitwise like the reference."""
    later = [s.proc.stderr for s in sc.stopped[1:]] + [sc.final.stderr]
    for st, next_stderr in zip(sc.stopped, later, strict=True):
        left = max(st.complete, default=0)
        if st.stop.expect is not None:
            assert left == st.stop.expect, (st.stop, st.entries)
            if st.stop.when.startswith("saving:"):  # the kill came while orbax's temporary directory was there
                assert any(e.startswith(st.stop.when[7:] + ".") and "tmp" in e for e in st.entries), st.entries
        if st.stop.signals == (signal.SIGKILL,):
            # only a kill after the last checkpoint can lose the race with the run's own exit
            assert st.proc.returncode == -signal.SIGKILL or (left == EPOCHS and st.proc.returncode == 0), st.proc
        assert resumed_at(next_stderr) == left, (st.entries, next_stderr)
    assert_same_as_reference(sc.run_dir, sc.final, ref)


KILLS = {  # the default suite's two: before the first checkpoint, during a save
    "before-the-first-checkpoint": [Stop("save:2", expect=0)],
    "during-a-save": [Stop("saving:4", expect=2)],
}
SIGNALS = {  # a first SIGINT/SIGTERM lets the chunk finish and save; a run started from that resumes exactly
    "SIGINT": [Stop("save:2", expect=2, signals=(signal.SIGINT,))],  # as the chunk's save begins: it goes on
}


def random_stop(seed: int) -> Stop:
    """A kill at a seeded random time: 0-150 ms after a random event of the run (compiling, training, saving)."""
    rng = random.Random(seed)
    return Stop(rng.choice(["startup", "metrics:1", "ckpt:2", "ckpt:4", "ckpt:6"]), delay=rng.uniform(0.0, 0.15))


SLOW_KILLS = {
    "after-the-last-checkpoint": [Stop("saved:8", expect=8)],
    "at-start-up": [Stop("startup", expect=0)],
    "during-the-first-save": [Stop("saving:2", expect=0)],
    "right-after-the-first-checkpoint": [Stop("saved:2", expect=2)],
    "epochs-written-checkpoint-not-yet": [Stop("save:4", expect=2)],
    "right-after-a-checkpoint": [Stop("saved:4", expect=4)],
    "mid-run-epochs-written": [Stop("save:6", expect=4)],
    "during-another-save": [Stop("saving:6", expect=4)],
    "during-the-last-save": [Stop("saving:8", expect=6)],
    "twice": [Stop("saving:2", expect=0), Stop("save:6", expect=4)],
    "three-times": [Stop("save:2", expect=0), Stop("saved:4", expect=4), Stop("saving:8", expect=6)],
    **{f"random-{seed}": [random_stop(seed)] for seed in range(3)},  # polled: anywhere, not at a named point
}
TWICE = [f"SIGINT-twice-{i}" for i in range(3)]  # a second SIGINT aborts at once
SLOW_SIGNALS = {
    "SIGTERM": [Stop("save:4", expect=4, signals=(signal.SIGTERM,))],
    **{name: [Stop("save:2", expect=0, signals=(signal.SIGINT, signal.SIGINT))] for name in TWICE},
    "SIGTERM-in-the-last-chunk": [Stop("save:8", expect=8, signals=(signal.SIGTERM,))],
}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, start_python, reference) -> dict[str, Scenario]:
    """The default suite's kill and signal scenarios, run at once."""
    work = tmp_path_factory.mktemp("stopped")
    return parallel({k: partial(stop_and_resume, start_python, work, k, v) for k, v in {**KILLS, **SIGNALS}.items()})


@pytest.fixture(scope="module")
def slow_stopped(tmp_path_factory, start_python, reference) -> dict[str, Scenario]:
    """The slow suite's kill and signal scenarios, run at once."""
    work = tmp_path_factory.mktemp("slow-stopped")
    scenarios = {**SLOW_KILLS, **SLOW_SIGNALS}
    return parallel({k: partial(stop_and_resume, start_python, work, k, v) for k, v in scenarios.items()})


@pytest.mark.parametrize("name", KILLS)
def test_kill_9_then_resume_equals_the_run_left_alone(stopped, reference, name: str) -> None:
    """kill -9 at a point of the run, `train --resume`: same final line and bitwise the same parameters."""
    check_scenario(stopped[name], reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_KILLS)
def test_kill_9_anywhere_then_resume_equals_the_run_left_alone(slow_stopped, reference, name: str) -> None:
    """More kill points, and runs killed again while resuming: each resume ends bitwise like the reference."""
    check_scenario(slow_stopped[name], reference)


def check_signalled(sc: Scenario, ref: Reference, signum: int) -> None:
    st = sc.stopped[0]
    assert st.proc.returncode == 128 + signum, st.proc.stderr
    assert st.proc.stdout == ""
    assert f"jaxrnn: {signal.Signals(signum).name}: stopping after this chunk's checkpoint" in st.proc.stderr
    m = STOPPED.match(st.proc.stderr.splitlines()[-1])
    assert m and m.group(1) == signal.Signals(signum).name and m.group(3) == str(sc.run_dir), st.proc.stderr
    epoch = int(m.group(2))
    assert epoch % 2 == 0 and st.complete[-1] == epoch  # stopped at a chunk's end, its checkpoint saved
    assert [json.loads(line)["epoch"] for line in st.metrics_text.splitlines()] == list(range(1, epoch + 1))
    check_scenario(sc, ref)


@pytest.mark.parametrize("name", [*SIGNALS, pytest.param("SIGTERM", marks=pytest.mark.slow)])
def test_signal_saves_the_chunk_exits_128_plus_signum_and_resumes_exactly(request, reference, name: str) -> None:
    """SIGINT/SIGTERM: the chunk finishes and is saved, exit 130/143; resuming completes bitwise."""
    sc = request.getfixturevalue("stopped" if name in SIGNALS else "slow_stopped")[name]
    check_signalled(sc, reference, signal.Signals[name])
    assert sc.stopped[0].complete[-1] < EPOCHS  # the signal came early enough to stop the run


@pytest.mark.slow
def test_signal_in_the_last_chunk_then_resume_prints_the_line(slow_stopped, reference) -> None:
    """SIGTERM as the last chunk's checkpoint is saved: the run is complete, so it prints the reference's line
    and exits 0 (saying the signal came as it completed); resuming it says it is finished."""
    sc = slow_stopped["SIGTERM-in-the-last-chunk"]
    st = sc.stopped[0]
    assert st.proc.returncode == 0 and st.proc.stdout == reference.line + "\n", st.proc.stderr
    assert st.proc.stderr.splitlines()[-1] == "jaxrnn: SIGTERM came as the run completed; its result is above"
    check_scenario(sc, reference)


@pytest.mark.slow
@pytest.mark.parametrize("name", TWICE)
def test_second_sigint_exits_130_and_keeps_the_last_checkpoint(slow_stopped, reference, name: str) -> None:
    """Two SIGINTs 5 ms apart: exit 130 (or death by SIGINT, which a shell also shows as 130); resuming still
    ends bitwise like the reference."""
    sc = slow_stopped[name]
    assert sc.stopped[0].proc.returncode in (130, -signal.SIGINT), sc.stopped[0].proc.stderr
    check_scenario(sc, reference)


@pytest.mark.slow
def test_second_sigint_aborts_at_once_without_a_traceback(slow_stopped) -> None:
    """Each double SIGINT aborts at once ('interrupted', before the first checkpoint) with no traceback."""
    for name in TWICE:
        st = slow_stopped[name].stopped[0]
        assert "Traceback" not in st.proc.stderr, st.proc.stderr
        assert st.proc.stderr.splitlines()[-1] == "jaxrnn: interrupted; the last saved checkpoint is kept", name


# Commands run once each (bad input, damaged runs, non-finite losses, eval and sample) -----------------------


def _latest_step_dir(run_dir: Path) -> Path:
    return run_dir / checkpoint.CHECKPOINTS / str(complete(run_dir)[-1])


def _data_files(run_dir: Path) -> list[Path]:
    """The array data files of the latest checkpoint (RUN/checkpoints/N/state/**/d/*)."""
    files = [p for p in (_latest_step_dir(run_dir) / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    return files


def _truncate_state(run_dir: Path, runs) -> None:
    for f in _data_files(run_dir):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _garbage_state(run_dir: Path, runs) -> None:
    rng = np.random.default_rng(0)
    for f in _data_files(run_dir):
        f.write_bytes(rng.integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())


def _meta_file(run_dir: Path) -> Path:
    return _latest_step_dir(run_dir) / "meta" / "metadata"


def _link_out(run_dir: Path, runs) -> None:
    """The meta file moved out of the run (its content intact) and linked back in."""
    meta, outside = _meta_file(run_dir), run_dir.parent / f"{run_dir.name}-outside.json"
    shutil.move(meta, outside)
    meta.symlink_to(outside)


def _foreign(run_dir: Path, runs) -> None:
    """A checkpoint of the --hidden 8 run copied in as this run's latest."""
    other = runs["other"] / checkpoint.CHECKPOINTS
    shutil.copytree(other / str(complete(runs["other"])[-1]), run_dir / checkpoint.CHECKPOINTS / "10")


def _cut_back(run_dir: Path, runs) -> None:
    """Latest checkpoint at epoch 4, and metrics.jsonl past it: epochs 5-8, a later epoch, a half-written line."""
    for epoch in (6, 8):
        shutil.rmtree(run_dir / checkpoint.CHECKPOINTS / str(epoch))
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 9, "train_loss": 1.0, "train_ppl": 2.7, "val_loss": 1.0, "val_ppl": 2.7}\n')
        f.write('{"epoch": 5, "train_loss": 2.9')


# kind -> how a copy of the reference run is damaged (each case gets its own copy)
DAMAGE: dict[str, Callable[[Path, Any], None]] = {
    "intact": lambda d, runs: None,
    "no-checkpoints": lambda d, runs: shutil.rmtree(d / checkpoint.CHECKPOINTS),
    "no-config": lambda d, runs: (d / "config.json").unlink(),
    "garbage-config": lambda d, runs: (d / "config.json").write_text("{not json"),
    "no-metrics": lambda d, runs: (d / "metrics.jsonl").unlink(),
    "truncated-state": _truncate_state,
    "garbage-state": _garbage_state,
    "garbage-meta": lambda d, runs: _meta_file(d).write_text("{not json"),
    "truncated-meta": lambda d, runs: _meta_file(d).write_bytes(_meta_file(d).read_bytes()[:100]),
    "huge-meta": lambda d, runs: _meta_file(d).write_text(json.dumps({"format": 1, "pad": "x" * (2 << 20)})),
    "link-out": _link_out,
    "foreign": _foreign,
    "cut-back": _cut_back,
}

# name -> (argv after `jaxrnn`, regex the last stderr line must match). Placeholders: {ref}, {best} and
# {reldata} are the runs (read only); {run} / {run:KIND} a fresh copy of the reference, damaged by DAMAGE[KIND],
# which the command must leave unchanged; {out} a path that must not exist afterwards; {new} a new run directory;
# {empty} {not-utf8} {short} {mid} {text} {adir} data files; {pruned} an epoch whose checkpoint the 'best' run no
# longer keeps, {kept} one it keeps that is neither its best nor its last.
BAD_INPUTS: dict[str, tuple[list[str], str]] = {
    "data-empty": (["train", *RUN_FLAGS, "--data", "{empty}", "--out", "{out}"],
                   "no letters A-Z, .*; pass --preprocessing none"),
    "data-a-directory": (["train", *RUN_FLAGS, "--data", "{adir}", "--out", "{out}"], "is a directory"),
    "data-not-utf8": (["train", *RUN_FLAGS, "--data", "{not-utf8}", "--out", "{out}"], "is not UTF-8 text"),
    "data-shorter-than-a-window": (["train", *RUN_FLAGS, "--data", "{short}", "--out", "{out}"],
                                   "gives 0 windows of 9 characters"),
    "data-too-short-for-the-split": (["train", *RUN_FLAGS, "--data", "{mid}", "--out", "{out}"],
                                     r"gives \d+ windows .* 1024 train \+ 256 validation"),
    "eval-data-shorter-than-a-window": (["eval", "--run", "{ref}", "--data", "{short}"], "fewer than 9 characters"),
    "eval-data-not-utf8": (["eval", "--run", "{ref}", "--data", "{not-utf8}"], "is not UTF-8 text"),
    "eval-data-missing": (["eval", "--run", "{ref}", "--data", "{out}"], "does not exist"),
    "num-preds-not-a-number": (["sample", "--run", "{ref}", "--num-preds", "abc"], "--num-preds: invalid int"),
    "step-zero": (["sample", "--run", "{ref}", "--step", "0"], "neither 'best' nor a checkpoint's number"),
    "step-not-kept": (["sample", "--run", "{best}", "--step", "{pruned}"],
                      r"no checkpoint \d+ in .*; pass --step best or one of \[1, "),
    "sample-run-without-checkpoints": (["sample", "--run", "{run:no-checkpoints}"], "no checkpoint in"),
    "eval-run-without-checkpoints": (["eval", "--run", "{run:no-checkpoints}"], "no checkpoint in"),
    "sample-missing-run": (["sample", "--run", "{out}"], "does not exist"),
    "garbage-meta": (["sample", "--run", "{run:garbage-meta}"],
                     r"checkpoint 8 in .* is damaged \(meta: JSONDecodeError\); pass --step 6, the latest"),
    "truncated-meta": (["sample", "--run", "{run:truncated-meta}"],
                       r"checkpoint 8 in .* is damaged \(meta: JSONDecodeError\); pass --step 6, the latest"),
    "huge-meta": (["eval", "--run", "{run:huge-meta}"], "far more than jaxrnn writes"),
    "link-out-of-the-checkpoint": (["sample", "--run", "{run:link-out}"], "is a link out of the checkpoint"),
    "resume-another-runs-checkpoint": (["train", "--resume", "{run:foreign}"],
                                       r"checkpoint 10 in .* was written by another run .*'hidden'"),
    "resume-with-hidden": (["train", "--resume", "{run}", "--hidden", "8"], "; drop --hidden$"),
    "resume-with-more-flags": (["train", "--resume", "{run}", "--lr", "2", "--out", "{out}", "--force",
                                "--skip-nonfinite"], "; drop --lr --skip-nonfinite --out --force$"),
    "resume-without-config": (["train", "--resume", "{run:no-config}"], "holds no config.json"),
    "resume-garbage-config": (["train", "--resume", "{run:garbage-config}"], r"config .*config\.json is not JSON \("),
    "resume-missing-dir": (["train", "--resume", "{out}"], "does not exist; pass --resume with a run directory"),
    "train-into-a-run": (["train", *RUN_FLAGS, "--hidden", "8", "--out", "{run}"], "already holds a run"),
    # refused after the corpus is read and before the run directory is made: no {out} is left behind
    "devices-more-than-there-are": (["train", *RUN_FLAGS, "--devices", "512", "--out", "{out}"],
                                    "asks for more devices than the"),
    "batch-the-devices-cannot-split": (["train", *RUN_FLAGS, "--devices", "2", "--batch-size", "127", "--out",
                                        "{out}"], "does not split over 2 devices|asks for more devices"),
    "sequential-streams-too-short": (["train", *RUN_FLAGS, "--batching", "sequential", "--batch-size", "512",
                                      "--out", "{out}"], "streams of 2, fewer than --num-steps 8"),
    "split-part-without-a-window": (["train", "--hidden", "16", "--batch-size", "128", "--num-steps", "8", "--data",
                                     "{mid}", "--split", "0.98,0.01,0.01", "--out", "{out}"], "holds no window"),
}
OTHERS: dict[str, list[str]] = {
    "prompt-preprocessed": ["sample", "--run", "{ref}", "--prefix", "Time Traveller!"],
    "resume-finished": ["train", "--resume", "{run}"],
    "resume-finished-without-metrics": ["train", "--resume", "{run:no-metrics}"],
    "resume-cut-back": ["train", "--resume", "{run:cut-back}"],
    **{f"resume-{k}": ["train", "--resume", f"{{run:{k}}}"] for k in ("truncated-state", "garbage-meta", "link-out")},
    "truncated-state": ["sample", "--run", "{run:truncated-state}"],
    "garbage-state": ["eval", "--run", "{run:garbage-state}"],
    "earlier-step-of-a-damaged-run": ["sample", "--run", "{run:garbage-meta}", "--step", "6"],
    "eval-ref": ["eval", "--run", "{ref}"],
    "eval-ref-file": ["eval", "--run", "{ref}", "--data", "{text}"],
    "eval-best": ["eval", "--run", "{best}", "--step", "best"],
    "eval-kept": ["eval", "--run", "{best}", "--step", "{kept}"],
    "sample-best": ["sample", "--run", "{best}", "--step", "best", "--temperature", "1", "--seed", "3"],
    "sample-kept": ["sample", "--run", "{best}", "--step", "{kept}", "--temperature", "1", "--seed", "3"],
    "resume-from-another-directory": ["train", "--resume", "{reldata}"],
    "eval-from-another-directory": ["eval", "--run", "{reldata}"],
    "nonfinite-at-once": ["train", *RUN_FLAGS, "--lr", "1e37", "--out", "{new}"],
    "nonfinite-later": ["train", *FLAGS, "--lr", "3000", "--clip", "0.1", "--save-every", "1", "--epochs", "4",
                        "--out", "{new}"],
    "nonfinite-skipping": ["train", *RUN_FLAGS, "--lr", "1e37", "--skip-nonfinite", "--out", "{new}"],
}


@dataclass
class Done:
    """A command's result and the paths its placeholders stood for."""

    proc: subprocess.CompletedProcess
    paths: dict[str, Path]
    before: dict[str, dict[str, bytes]]  # placeholder -> snapshot of the run copy it made

    def unchanged(self) -> bool:
        return all(snapshot(self.paths[k]) == s for k, s in self.before.items())


@pytest.fixture(scope="module")
def commands(tmp_path_factory, runs, call) -> dict[str, Done]:
    """Every command of BAD_INPUTS and OTHERS, each on its own copies, run one after another in this process
    (a fresh process each would cost more in JAX imports than the commands take; the runs they read were
    written by other processes, and the kill tests above resume in fresh ones)."""
    work = tmp_path_factory.mktemp("commands")
    corpus = (Path(os.environ["JAXRNN_DATA_DIR"]) / "timemachine.txt").read_text()
    files = {"empty": b"", "not-utf8": b"\xff\xfe time traveller \x81", "short": b"abc", "mid": corpus[:700].encode(),
             "text": corpus[20000:30000].encode()}
    for name, data in files.items():
        (work / name).write_bytes(data)
    (work / "adir").mkdir()
    best_steps = checkpoint.steps(runs["best"])
    fixed = {**{k: work / k for k in [*files, "adir"]}, "ref": runs["ref"], "best": runs["best"],
             "reldata": runs["reldata"],
             "pruned": min(set(range(1, 6)) - set(best_steps)), "kept": best_steps[-3]}
    jobs, made = {}, {}
    for name, args in {**{k: v[0] for k, v in BAD_INPUTS.items()}, **OTHERS}.items():
        paths: dict[str, Path] = {}
        before: dict[str, dict[str, bytes]] = {}

        def resolve(m: re.Match, name=name, paths=paths, before=before) -> str:
            key, kind = m.group(1), m.group(2)
            if key in fixed:
                return str(fixed[key])
            paths[m.group(0)] = path = work / name / (kind or key)
            if key == "run":
                shutil.copytree(runs["ref"], path, symlinks=True)
                DAMAGE[kind or "intact"](path, runs)
                before[m.group(0)] = snapshot(path)
            return str(path)

        (work / name).mkdir()
        argv = [re.sub(r"\{([a-z][\w-]*)(?::([\w-]+))?\}", resolve, a) for a in args]
        jobs[name] = argv
        made[name] = (paths, before)
    return {k: Done(call(argv, work), *made[k]) for k, argv in jobs.items()}


@pytest.mark.parametrize("name", BAD_INPUTS)
def test_bad_input_exits_2_with_one_line_and_loses_nothing(commands, name: str) -> None:
    """Exit 2, `jaxrnn: error: what; what to do` as the last line, no traceback, nothing saved changed."""
    done = commands[name]
    assert_user_error(done.proc, BAD_INPUTS[name][1])
    assert done.unchanged()
    if "{out}" in done.paths:
        assert not done.paths["{out}"].exists()  # no half-made run directory


@pytest.mark.parametrize("name", ["truncated-state", "garbage-state"])
def test_damaged_array_files_are_refused(commands, name: str) -> None:
    """Truncated or overwritten array data of the latest checkpoint: exit 2 with the error, the run unchanged."""
    done = commands[name]
    assert done.proc.returncode == 2 and done.proc.stdout == "", done.proc.stderr
    assert re.fullmatch(r"jaxrnn: error: checkpoint 8 in .* is damaged \(state: \w+\); pass --step 6, the latest "
                        r"checkpoint that loads\n", done.proc.stderr), done.proc.stderr
    assert done.unchanged()


@pytest.mark.slow
def test_damaged_array_files_error_is_one_clean_line_every_time(commands, run_python, tmp_path: Path) -> None:
    """The refusal of truncated array files is one clean line, in 16 tries, 3 at once (load widens the race)."""
    run_dir = commands["truncated-state"].paths["{run:truncated-state}"]
    procs = parallel({i: partial(run_python, jx("sample", "--run", run_dir), tmp_path) for i in range(16)})
    dirty = [p.stderr for p in procs.values() if "Traceback" in p.stderr or not ERROR.match(p.stderr.splitlines()[-1])]
    assert not dirty, f"{len(dirty)} of 16 tries:\n{dirty[0]}"


def test_an_earlier_step_of_a_damaged_run_still_samples(commands, reference) -> None:
    """With the latest checkpoint damaged, `sample --step 6` still works."""
    proc = commands["earlier-step-of-a-damaged-run"].proc
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == jaxrnn.load(reference.dir, 6).predict("time traveller", 50) + "\n"


def test_prompt_is_preprocessed_as_the_corpus_was(commands, reference) -> None:
    """A prompt reads as the run's corpus did (d2l's preprocessing: lower case, non-letters to spaces), with
    a note on stderr saying so: no character of it turns into <unk>."""
    proc = commands["prompt-preprocessed"].proc
    assert proc.returncode == 0, proc.stderr
    assert "jaxrnn: note: the prompt reads 'time traveller ' after --preprocessing d2l" in proc.stderr
    assert "warning" not in proc.stderr
    assert proc.stdout == jaxrnn.load(reference.dir).predict("time traveller ", 50) + "\n"
    assert proc.stdout.startswith("time traveller ") and len(proc.stdout) == len("time traveller ") + 50 + 1


def test_resuming_a_finished_run_prints_its_line_again(commands, reference) -> None:
    """`train --resume` on a finished run: the same final line, exit 0, the run left as it was."""
    done = commands["resume-finished"]
    assert done.proc.returncode == 0, done.proc.stderr
    assert done.proc.stdout == reference.line + "\n"
    assert f"finished all {EPOCHS} epochs already" in done.proc.stderr
    assert done.unchanged()


def test_resuming_a_finished_run_without_metrics_fails_cleanly_or_prints_its_line(commands, reference) -> None:
    """A finished run whose metrics.jsonl is gone: the final line again, or a one-line error; no traceback."""
    proc = commands["resume-finished-without-metrics"].proc
    assert "Traceback" not in proc.stderr, proc.stderr
    if proc.returncode == 0:
        assert proc.stdout == reference.line + "\n"
    else:
        assert_user_error(proc)


def test_resume_cuts_metrics_back_to_the_checkpoint(commands, reference) -> None:
    """Lines past the checkpoint (later epochs, a half-written line) are cut; then each epoch appears once."""
    done = commands["resume-cut-back"]
    assert resumed_at(done.proc.stderr) == 4
    assert_same_as_reference(done.paths["{run:cut-back}"], done.proc, reference)


DAMAGED_LATEST = ["truncated-state", "garbage-meta", "link-out"]


@pytest.mark.parametrize("kind", DAMAGED_LATEST)
def test_resume_falls_back_past_a_damaged_latest_checkpoint(commands, kind: str) -> None:
    """A damaged latest checkpoint: a warning naming it, training resumes from the one before, and the damaged
    checkpoint's files are kept (moved aside, not deleted)."""
    done = commands[f"resume-{kind}"]
    stderr = done.proc.stderr
    assert re.search(r"^jaxrnn: warning: .*checkpoints?[ /]8\b.*; .*trying an earlier", stderr, re.M), stderr
    assert resumed_at(stderr) == 6
    (placeholder, before), = done.before.items()
    damaged = {k[len("checkpoints/8/"):]: v for k, v in before.items() if k.startswith("checkpoints/8/")}
    after = snapshot(done.paths[placeholder])
    some = next(iter(damaged))
    homes = {k[: -len(some)] for k in after if k.endswith("/" + some)}
    assert any(all(after.get(home + rel) == v for rel, v in damaged.items()) for home in homes), sorted(after)


@pytest.mark.parametrize("kind", DAMAGED_LATEST)
def test_resume_past_a_damaged_latest_checkpoint_completes_exactly(commands, reference, kind: str) -> None:
    """After the fallback, the resumed run ends bitwise like the reference."""
    done = commands[f"resume-{kind}"]
    assert_same_as_reference(done.paths[f"{{run:{kind}}}"], done.proc, reference)


def test_a_run_trained_on_a_relative_data_path_resumes_from_another_directory(commands, runs) -> None:
    """`--data corpus.txt` trained in one directory: resume and eval work from another."""
    resumed, evaluated = commands["resume-from-another-directory"].proc, commands["eval-from-another-directory"].proc
    assert resumed.returncode == 0, resumed.stderr
    # a text of its own (a cut of The Time Machine): its default prompt is its opening words
    assert resumed.stdout.startswith(f"perplexity {metrics(runs['reldata'])[-1]['val_ppl']:.1f}, 'the time machine by")
    parse_eval(evaluated)


# Non-finite losses ------------------------------------------------------------------------------------------

NONFINITE = re.compile(r"^jaxrnn: error: the (?:training|validation) loss became (?:non-finite|too large for a "
                       r"perplexity \([\d.e+]+ nats: exp overflows\)) at epoch (\d+), "
                       r"step (\d+) \((.*)\); lower --lr or --clip")


def test_nonfinite_loss_at_once_stops_with_no_checkpoint(commands) -> None:
    """--lr 1e37 diverges in the first steps: exit 2, 'no checkpoint was saved before it', no epoch recorded."""
    done = commands["nonfinite-at-once"]
    m = NONFINITE.match(assert_user_error(done.proc))
    assert m and m.group(1) == "1" and m.group(3) == "no checkpoint was saved before it", done.proc.stderr
    run_dir = done.paths["{new}"]
    assert complete(run_dir) == [] and metrics(run_dir) == []
    assert jaxrnn.Config.load(run_dir / "config.json").lr == 1e37  # the run is there to inspect or resume


def test_nonfinite_loss_later_keeps_the_last_good_checkpoint(commands) -> None:
    """--lr 3000 --clip 0.1 --save-every 1 diverges in epoch 3 (its loss past what a perplexity holds): exit 2,
    epoch 2's checkpoint kept and loadable."""
    done = commands["nonfinite-later"]
    m = NONFINITE.match(assert_user_error(done.proc))
    assert m, done.proc.stderr
    epoch, step = int(m.group(1)), int(m.group(2))
    assert epoch >= 2, "this lr/clip no longer diverges after a first good epoch on this machine"
    assert (epoch - 1) * 8 < step <= epoch * 8
    assert m.group(3) == f"the checkpoint at epoch {epoch - 1} is kept"
    run_dir = done.paths["{new}"]
    assert complete(run_dir) == list(range(1, epoch))[-3:]
    assert [r["epoch"] for r in metrics(run_dir)] == list(range(1, epoch))
    kept = jaxrnn.load(run_dir)
    assert kept.done == epoch - 1 and int(kept.state.step) == (epoch - 1) * 8
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(kept.params))


def test_skipping_cannot_save_a_run_whose_parameters_diverged(commands) -> None:
    """--skip-nonfinite with --lr 1e37: the first step makes every later loss nan; the run still stops (exit 2)."""
    done = commands["nonfinite-skipping"]
    assert NONFINITE.match(assert_user_error(done.proc)), done.proc.stderr
    assert complete(done.paths["{new}"]) == []


def test_skipping_error_does_not_advise_the_flag_already_given(commands) -> None:
    """The advice after `;` is something the user has not already done."""
    last = commands["nonfinite-skipping"].proc.stderr.splitlines()[-1]
    assert "--skip-nonfinite" not in last.split(";", 1)[1]


def test_skip_nonfinite_skips_and_counts_the_bad_steps(monkeypatch, capsys, tmp_path: Path) -> None:
    """A loss made nan for the one batch holding a chosen window each epoch: without --skip-nonfinite exit 2 at
    that step; with it, each epoch skips exactly that step, counts it in skipped_steps, and trains on."""
    c = load_corpus(None, 8, 1024, 256)
    rows = [w.tobytes() for w in c.train]
    val = {w.tobytes() for w in c.val}
    k = next(i for i, r in enumerate(rows) if rows.count(r) == 1 and r not in val)  # a window like no other
    target = jnp.asarray(c.train[k])
    real = steps.loss_sum

    def poisoned(model, params, windows_BxT1, mask_B, key=None, state=None, keep=None):
        s, n, h = real(model, params, windows_BxT1, mask_B, key, state, keep)
        hit = jnp.any(jnp.all(windows_BxT1 == target, axis=1) & mask_B)
        return s * jnp.where(hit, jnp.nan, 1.0), n, h

    monkeypatch.setattr(steps, "loss_sum", poisoned)
    flags = [*FLAGS, "--save-every", "2", "--epochs", "4"]
    assert cli.main(["train", *flags, "--out", str(tmp_path / "stop")]) == 2
    step = int(np.flatnonzero(epoch_order(0, 0, 1024) == k)[0]) // 128 + 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"jaxrnn: error: the training loss became non-finite at epoch 1, step {step} (no "), last
    assert cli.main(["train", *flags, "--skip-nonfinite", "--out", str(tmp_path / "skip")]) == 0
    out, err = capsys.readouterr()
    assert re.match(r"^perplexity \d+\.\d, 'time traveller.{50}'\n$", out) and "1 steps skipped" in err
    records = metrics(tmp_path / "skip")
    assert [r["skipped_steps"] for r in records] == [1, 1, 1, 1]
    assert all(math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) for r in records)
    assert int(jaxrnn.load(tmp_path / "skip").state.opt_state.total_notfinite) == 4  # skipped, not applied


def test_a_skip_nonfinite_run_can_be_sampled_and_resumed(capsys, tmp_path: Path) -> None:
    """A run trained with --skip-nonfinite loads (its optimizer state holds the skip counters) and resumes."""
    run_dir = tmp_path / "run"
    assert cli.main(["train", *RUN_FLAGS, "--skip-nonfinite", "--out", str(run_dir)]) == 0
    line = capsys.readouterr().out
    shutil.rmtree(run_dir / checkpoint.CHECKPOINTS / "8")  # as if killed before the last save
    assert cli.main(["sample", "--run", str(run_dir)]) == 0, capsys.readouterr().err
    assert int(jaxrnn.load(run_dir).state.opt_state.total_notfinite) == 0
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0, capsys.readouterr().err
    out, err = capsys.readouterr()
    assert resumed_at(err) == 6 and out == line


# A full disk or an unwritable directory during a save (in-process, `checkpoint._write` made to fail) ---------


@pytest.mark.parametrize("errno_, fail_from", [(28, 4), (13, 2)], ids=["disk-full-at-epoch-4", "unwritable-at-2"])
def test_failed_save_exits_2_keeps_earlier_checkpoints_and_resumes_exactly(
        monkeypatch, capsys, tmp_path: Path, reference, errno_: int, fail_from: int) -> None:
    """A save that raises OSError: exit 2 with one line, earlier checkpoints intact; resume ends bitwise."""
    real, seen = checkpoint._write, {}

    def write(mgr, epoch, args, metrics_):
        if epoch >= fail_from:
            seen["before"] = snapshot(run_dir / checkpoint.CHECKPOINTS)
            raise OSError(errno_, os.strerror(errno_))
        real(mgr, epoch, args, metrics_)

    run_dir = tmp_path / "run"
    monkeypatch.setattr(checkpoint, "_write", write)
    assert cli.main(["train", *RUN_FLAGS, "--out", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    last = err.splitlines()[-1]
    assert ERROR.match(last) and f"cannot save checkpoint {fail_from} " in last, last
    assert os.strerror(errno_) in last and f"--resume {run_dir}" in last
    assert ("free disk space" if errno_ == 28 else f"make {run_dir} writable") in last  # the cause's own remedy
    assert snapshot(run_dir / checkpoint.CHECKPOINTS) == seen["before"]  # what was saved is untouched
    assert checkpoint.steps(run_dir) == list(range(2, fail_from, 2))
    if fail_from > 2:
        assert int(jaxrnn.load(run_dir).state.step) == (fail_from - 2) * 8  # restorable
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert resumed_at(err) == fail_from - 2
    assert_same_as_reference(run_dir, subprocess.CompletedProcess([], 0, out, err), reference)


def test_full_disk_on_the_metrics_write_exits_2_and_resumes_exactly(monkeypatch, capsys, tmp_path: Path,
                                                                    reference) -> None:
    """metrics.jsonl fills the disk halfway through epochs 5-6's lines (the write takes 30 bytes, then ENOSPC):
    exit 2 with one line that says to free space, the file cut back to epoch 4's records (never half a
    record), checkpoints 2 and 4 kept; resuming ends bitwise like the reference."""
    run_dir, real_open = tmp_path / "run", open

    class FillsUp:
        def __init__(self, f) -> None:
            self.f, self.written = f, 0

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.f.close()

        def write(self, b) -> int:
            if self.written:  # the disk is full now
                raise OSError(28, os.strerror(28))
            self.written = self.f.write(bytes(b[:30]))  # part of epoch 5's line went in
            return self.written

    def full_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        full = Path(file).name == "metrics.jsonl" and "a" in mode and Path(file).read_text().count("\n") >= 4
        return FillsUp(f) if full else f

    monkeypatch.setattr(rundir, "open", full_open, raising=False)
    assert cli.main(["train", *RUN_FLAGS, "--out", str(run_dir)]) == 2
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    assert out == "" and "Traceback" not in err and ERROR.match(last), err
    assert f"cannot write {run_dir / 'metrics.jsonl'} (No space left on device); free disk space" in last
    assert f"--resume {run_dir}" in last
    assert checkpoint.steps(run_dir) == [2, 4]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4] and lines[-1].endswith("\n")
    monkeypatch.undo()
    assert cli.main(["train", "--resume", str(run_dir)]) == 0
    out, err = capsys.readouterr()
    assert resumed_at(err) == 4
    assert_same_as_reference(run_dir, subprocess.CompletedProcess([], 0, out, err), reference)


# Numbers that cannot train (argparse: the same in-process as in a child, so checked here, cheaply) -----------


NUMBERS = [(flag, value) for flag in ["--batch-size", "--num-steps", "--hidden", "--epochs", "--lr"]
           for value in ["0", "-3", "x1"] if (flag, value) not in {("--epochs", "0"), ("--lr", "x1")}]  # in test_cli


@pytest.mark.parametrize("spec", ["bogus", "saving", "saving:x", "during:4", "saved:4:SIGFOO"])
def test_a_fault_plan_not_of_its_form_exits_2_before_anything_runs(monkeypatch, capsys, tmp_path: Path,
                                                                    spec: str) -> None:
    monkeypatch.setenv(faults.ENV, spec)
    faults.planned.cache_clear()
    try:
        assert cli.main(["train", *RUN_FLAGS, "--out", str(tmp_path / "run")]) == 2
    finally:
        monkeypatch.undo()
        faults.planned.cache_clear()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"jaxrnn: error: {faults.ENV}={spec!r} is not POINT:N[:SIGNAL,...] with POINT one of save, saving, saved; "
        f"unset {faults.ENV}")
    assert not (tmp_path / "run").exists()
    assert faults.parse("saving:4") == faults.Fault("saving", 4, (signal.SIGKILL,))
    assert faults.parse("save:2:SIGINT,SIGINT").signals == (signal.SIGINT, signal.SIGINT)


@pytest.mark.parametrize("flag, value", NUMBERS)
def test_numbers_that_cannot_train_exit_2(capsys, tmp_path: Path, flag: str, value: str) -> None:
    """Zero, negative and non-numeric sizes and rates: exit 2 naming the flag, before anything is written
    (argparse refuses what is not a number, Config.validate what is out of range)."""
    try:
        code = cli.main(["train", *RUN_FLAGS, flag, value, "--out", str(tmp_path / "run")])
    except SystemExit as e:
        code = e.code
    assert code == 2
    out, err = capsys.readouterr()
    last = err.splitlines()[-1]
    named = f"{flag}: '{value}'" if value == "x1" else f"{flag} must be "  # argument --window/--num-steps: ...
    assert out == "" and ERROR.match(last) and named in last, err
    assert not (tmp_path / "run").exists()


# eval and sample, with --step -------------------------------------------------------------------------------


def parse_eval(proc: subprocess.CompletedProcess) -> tuple[float, float]:
    assert proc.returncode == 0, proc.stderr
    m = EVAL.match(proc.stdout.rstrip("\n"))
    assert m and proc.stdout.count("\n") == 1, proc.stdout
    ppl, bpc, loss = (float(g) for g in m.groups())
    assert loss == pytest.approx(math.log(ppl), abs=2e-3) and bpc == pytest.approx(loss / math.log(2), abs=2e-3)
    return ppl, bpc


def test_eval_reproduces_the_runs_last_validation_perplexity(commands, reference) -> None:
    """`eval --run DIR` prints `perplexity X, bpc Y, loss Z` for the run's own validation windows: its last
    val_ppl, val_bpc and val_loss."""
    ppl, bpc = parse_eval(commands["eval-ref"].proc)
    last = reference.metrics[-1]
    assert ppl == pytest.approx(last["val_ppl"], abs=0.0051)  # printed with 2 decimals
    assert bpc == pytest.approx(last["val_loss"] / math.log(2), abs=0.00051)  # bpc = ln-loss / ln 2
    assert last["val_bpc"] == pytest.approx(last["val_loss"] / math.log(2), rel=1e-12)
    assert last["val_protocol"] == "d2l-windows"
    loss = jrun.evaluate(jaxrnn.load(reference.dir))
    assert math.exp(loss) == pytest.approx(last["val_ppl"], rel=1e-4)


def test_eval_on_a_file(commands, reference, tmp_path: Path) -> None:
    """`eval --data FILE`: perplexity and bpc of the file's windows, as the library computes them."""
    ppl, bpc = parse_eval(commands["eval-ref-file"].proc)
    loss = jrun.evaluate(jaxrnn.load(reference.dir), commands["eval-ref-file"].proc.args[-1])
    assert ppl == pytest.approx(math.exp(loss), abs=0.0051) and bpc == pytest.approx(loss / math.log(2), abs=5.1e-4)
    assert bpc == pytest.approx(math.log(ppl) / math.log(2), abs=1e-3)


def test_eval_step_best_and_n_read_those_checkpoints(commands, runs) -> None:
    """`eval --step best` and `--step N` evaluate those epochs' checkpoints, not the latest."""
    records = metrics(runs["best"])
    best = min(records, key=lambda r: r["val_ppl"])["epoch"]
    kept = checkpoint.steps(runs["best"])[-3]
    assert best != records[-1]["epoch"] and kept not in (best, records[-1]["epoch"]), "lr 10 no longer oscillates"
    for name, epoch in [("eval-best", best), ("eval-kept", kept)]:
        ppl, _ = parse_eval(commands[name].proc)
        assert ppl == pytest.approx(records[epoch - 1]["val_ppl"], rel=1e-4, abs=0.0051), name


def test_sample_step_best_and_n_sample_those_checkpoints(commands, runs) -> None:
    """`sample --step best|N` prints what the library samples from that checkpoint."""
    kept = checkpoint.steps(runs["best"])[-3]
    for name, step in [("sample-best", "best"), ("sample-kept", kept)]:
        proc = commands[name].proc
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == jaxrnn.load(runs["best"], step).predict("time traveller", 50, 1.0, 3) + "\n", name
    assert jaxrnn.load(runs["best"], "best").done == min(metrics(runs["best"]), key=lambda r: r["val_ppl"])["epoch"]
