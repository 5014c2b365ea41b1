"""What a new user and a fuzzer met first (issue 28), each as a test that failed before its fix: a preset keeps
its reading for another copy of its text, the CLI answers --version without JAX, what cannot fit or compile is
refused with its size, Ctrl-C ends a compilation, config files are refused by file and key, one process writes
a run directory, a full disk never cuts a record, every JSON written is strict, and the messages lead somewhere.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import jax
import pytest
from conftest import load_tool

from jaxrnn import artifacts, checkpoint, cli, data, interrupts, rundir, strict_json
from jaxrnn.config import PRESETS, Config
from jaxrnn.data import load_corpus
from jaxrnn.errors import JaxrnnError

ROOT = Path(__file__).resolve().parents[1]
HEAD = ROOT / "tests" / "data" / "tinyshakespeare-head.txt"  # 16 KB of Tiny Shakespeare
TINY = ["--hidden", "16", "--num-train", "256", "--num-val", "128", "--batch-size", "64", "--num-steps", "8",
        "--unroll", "1", "--no-curves", "--epochs", "1"]
ERROR = re.compile(r"^jaxrnn: error: .+; \S")


def user_error(proc: subprocess.CompletedProcess, match: str) -> str:
    """Exit 2, nothing on stdout, no traceback, one last line `jaxrnn: error: problem; what to do` matching."""
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert ERROR.match(last) and re.search(match, last), last
    return last


def strict(text: str):
    """Parse JSON as every parser must: NaN and Infinity are not JSON."""
    def refuse(name: str):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def named_head(monkeypatch) -> str:
    """'tinyshakespeare' stands for the repo's 16 KB slice of it (its sha1 in place of the whole text's)."""
    monkeypatch.setitem(data.CORPORA, "tinyshakespeare",
                        dataclasses.replace(data.CORPORA["tinyshakespeare"], sha1=data.sha1_of(HEAD)))
    return data.sha1_of(HEAD)


# 1. A preset is a recipe: the text may change, its reading must not --------------------------------------------


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_reads_another_text_as_it_reads_its_own(tmp_path: Path, name: str) -> None:
    """`--preset P --data FILE` keeps P's preprocessing, split and evaluation protocol: only the text changes."""
    mine = tmp_path / "mine.txt"
    mine.write_text("the user's own text " * 100)
    args = cli.build_parser().parse_args(["train", "--preset", name, "--data", str(mine)])
    cfg, preset = cli.config_from_args(args), PRESETS[name]
    assert cfg == preset.replace(data=str(mine))
    assert (cfg.preprocessing, cfg.split, cfg.eval) == (preset.preprocessing, preset.split, preset.eval)


def test_a_file_holding_a_named_corpus_is_read_as_that_corpus(named_head: str, tmp_path: Path) -> None:
    """A user's own copy of Tiny Shakespeare (found by its sha1) reads as `--data tinyshakespeare` does; the
    same text with one byte changed reads as any other text (d2l's way)."""
    copy = tmp_path / "my_copy.txt"
    shutil.copy(HEAD, copy)
    by_name, by_bytes = (cli.config_from_args(cli.build_parser().parse_args(["train", "--data", d]))
                         for d in ("tinyshakespeare", str(copy)))
    assert (by_bytes.preprocessing, by_bytes.split) == (by_name.preprocessing, by_name.split) == ("none", (0.9, 0.1, 0))
    other = tmp_path / "other.txt"
    other.write_bytes(HEAD.read_bytes() + b"!")
    assert (Config(data=str(other)).preprocessing, Config(data=str(other)).split) == ("d2l", None)
    saved = Config.from_dict(Config(data=str(copy), preprocessing="d2l", split=None).to_dict())
    assert saved.split == (0.9, 0.1, 0.0)  # only what a config leaves unsaid is the corpus' own
    stated = Config.from_dict({**Config().to_dict(), "data": str(copy)})
    assert (stated.preprocessing, stated.split) == ("d2l", None)  # a saved config states its reading


def test_d2l_counts_on_a_far_larger_text_warn_once(tmp_path: Path, capsys) -> None:
    """d2l's 10000 + 5000 windows on a text 12 times their size: one warning naming --split (a second read
    of it says nothing); The Time Machine, which they are d2l's counts for, none."""
    big = tmp_path / "big.txt"
    big.write_text((Path(os.environ["JAXRNN_DATA_DIR"]) / "timemachine.txt").read_text() + " and more")
    load_corpus(big)
    load_corpus(big)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and re.fullmatch(rf"jaxrnn: warning: d2l's window counts \(--num-train 10000, --num-val "
                                          rf"5000\) cover 15,032 of the [\d,]+ characters of {re.escape(str(big))} "
                                          r"\(8\.\d%\); pass --split .*", err[0]), err
    load_corpus()
    assert capsys.readouterr().err == ""


# 2. --version and --help answer without importing JAX -----------------------------------------------------------


@pytest.mark.parametrize("argv", [["--version"], ["--help"], ["train", "--help"], ["sample", "--help"]])
def test_version_and_help_do_not_import_jax(run_python, tmp_path: Path, argv: list[str]) -> None:
    code = ("import sys\nfrom jaxrnn import cli\ntry:\n    cli.main(%r)\nexcept SystemExit:\n    pass\n"
            "print('jax imported' if 'jax' in sys.modules else 'no jax', file=sys.stderr)" % argv)
    proc = run_python(["-c", code], tmp_path)
    assert proc.stderr.splitlines()[-1] == "no jax", proc.stderr
    assert proc.stdout.startswith("jaxrnn 0." if argv == ["--version"] else "usage: jaxrnn")


# 3. What cannot fit or compile is refused before it is built; Ctrl-C ends any wait ----------------------------


@pytest.mark.parametrize(("flags", "words"), [
    (["--hidden", "100000"], r"needs about [\d,.]+ GB of memory \(parameters and optimizer state [\d,.]+ GB, .*\), but "
                             r"this machine has [\d,.]+ [GM]B; lower --hidden, --layers or --embed"),
    (["--batch-size", "1000000000"], r"needs about [\d,.]+ GB .*activations of one step.* lower --batch-size "
                                     r"\(now 1000000000\), --window"),
    (["--layers", "1000", "--hidden", "16"], r"--layers 1000 makes a training program of about 864,500 operations "
                                             r".*; pass --layers 115 or fewer"),
])
def test_what_cannot_fit_or_compile_is_refused_before_it_is_built(call, tmp_path: Path, flags, words) -> None:
    """A model of 40 GB of weights, a batch of a billion windows, a thousand layers: exit 2 at once, with the
    size it would need and the limit, and no run directory."""
    user_error(call(["train", *flags, "--out", "run"], tmp_path), words)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("changes", [dict(hidden=256, batch_size=512), dict(cell="lstm", hidden=128, batch_size=512),
                                     pytest.param(dict(cell="gru", impl="flax", hidden=128, batch_size=512,
                                                       optimizer="adam"), marks=pytest.mark.slow)])
def test_the_memory_estimate_is_near_what_xla_allocates(changes: dict) -> None:
    """The estimate against XLA's own memory analysis of the compiled training chunk (the independent figure,
    as tools/budget_report.py measures it): within a factor of 1.6 either way."""
    row = load_tool("budget_report").memory({**changes, "num_train": 512, "num_val": 256})
    assert 1 / 1.6 < row["ratio"] < 1.6, row


def test_a_failed_start_leaves_a_directory_that_trains_again(call, tmp_path: Path, monkeypatch) -> None:
    """Out of memory at run time (XLA's RESOURCE_EXHAUSTED): exit 2 with one line, and the run directory it
    left, which never saved anything, is trained into again without --force, as is --resume."""
    from jaxrnn import training

    def exhausted(*args, **kwargs):  # a generator, as fit_chunks is: it fails at its first chunk
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 7500000000000 bytes.")
        yield

    monkeypatch.setattr(training, "fit_chunks", exhausted)
    user_error(call(["train", *TINY, "--out", "run"], tmp_path),
               r"out of memory while training \(RESOURCE_EXHAUSTED: .*; no checkpoint was saved\); lower --batch-size")
    monkeypatch.undo()
    again = call(["train", *TINY, "--out", "run"], tmp_path)
    assert again.returncode == 0, again.stderr
    assert "holds a run that never saved a checkpoint; starting it anew" in again.stderr


def test_only_a_jaxrnn_run_that_never_saved_anything_is_started_anew(call, tmp_path: Path) -> None:
    """A directory whose config.json is someone else's, or a run with checkpoints set aside in damaged/, is
    refused as before (nothing touched); only a start of jaxrnn's that saved nothing is trained into again."""
    for name, config in (("foreign", '{"editor": "vim"}'), ("set-aside", None)):
        d = tmp_path / name
        d.mkdir()
        (d / "samples.txt").write_text("keep me")
        if config is None:
            (d / "damaged" / "4").mkdir(parents=True)
            Config().save(d / "config.json", data_sha1="x", versions={})
        else:
            (d / "config.json").write_text(config)
        before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
        user_error(call(["train", *TINY, "--out", name], tmp_path), "already holds a run; pass --resume")
        assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before and (d / "damaged" / "4").exists() \
            == (config is None)


def test_a_config_that_states_counts_still_reads_d2l_s_way() -> None:
    """A config stating d2l's window counts but not its preprocessing still gets one (d2l's by default)."""
    assert Config.from_dict({"hidden": 64, "split": None}).preprocessing == "d2l"
    assert PRESETS["d2l-scratch"].replace(preprocessing=None).preprocessing == "d2l"
    assert Config().replace(data="tinyshakespeare", preprocessing=None).split is None  # the counts stay stated


def test_a_filesystem_without_locks_warns_and_goes_on(monkeypatch, tmp_path: Path, capsys) -> None:
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with rundir.writing(tmp_path / "run"):
        pass
    assert "cannot be locked (No locks available); make sure no other process writes it" in capsys.readouterr().err


def test_ctrl_c_ends_a_compilation(start_python, tmp_path: Path) -> None:
    """SIGINT while the first chunk compiles (a deep model, many seconds of XLA): the run stops at once, with
    one line, before its first checkpoint, instead of compiling, training and saving first."""
    proc = start_python(["-m", "jaxrnn.cli", "train", *TINY, "--layers", "96", "--out", "deep"], tmp_path)
    while not (tmp_path / "deep" / "metrics.jsonl").exists() and proc.poll() is None:  # made, then it compiles
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.splitlines()[-1] == ("jaxrnn: stopped by SIGINT while compiling, before the first checkpoint; "
                                    "'jaxrnn train --resume deep' starts it again"), err
    assert out == "" and checkpoint.steps(tmp_path / "deep") == []
    assert (tmp_path / "deep" / "metrics.jsonl").read_text() == ""


def test_an_abandoned_wait_leaves_its_work_to_its_thread() -> None:
    """`interrupts.wait(..., abandon=True)` raises Interrupted once a deferral has a signal (nothing unsaved),
    without waiting for the work; a plain wait returns the work's value, or raises its error."""
    assert interrupts.wait(lambda a, b: a + b, 2, 3) == 5
    with pytest.raises(ZeroDivisionError):
        interrupts.wait(lambda: 1 / 0)
    release, finished = threading.Event(), threading.Event()

    def work() -> None:
        release.wait(60)
        finished.set()

    with interrupts.deferred() as d:
        d.signum = signal.SIGINT
        with pytest.raises(interrupts.Interrupted, match="SIGINT"):
            interrupts.wait(work, abandon=True)
        assert not finished.is_set()  # left to its thread, not waited for
        release.set()
        d.unsaved = True  # trained past the last checkpoint: the wait goes on
        assert interrupts.wait(lambda: "done", abandon=True) == "done"


def test_a_signal_before_training_leaves_no_run_directory(tmp_path: Path, tiny_cfg, tiny_corpus) -> None:
    """Ctrl-C while the corpus is read (a signal the deferral caught before the run began): no directory."""
    from jaxrnn import run
    from jaxrnn.errors import Stopped

    with interrupts.deferred() as d:
        d.signum = signal.SIGINT
        with pytest.raises(Stopped, match="^stopped by SIGINT before training began$"):
            run.train(tiny_cfg(), tmp_path / "run", corpus=tiny_corpus)
    assert not (tmp_path / "run").exists()


# 4. Config files: the file and the key, never a traceback -----------------------------------------------------


@pytest.mark.parametrize(("text", "words"), [
    (b"[1, 2]", r"config .*c\.json holds an array, not an object of settings; pass a config\.json"),
    (b"null", r"holds null, not an object"),
    (b"\xff\xfe\x00binary", r"is not UTF-8 text"),
    (b'{"hidden": 16', r"is not JSON \(Expecting .* at line 1"),
    (b'{"hidden": "big"}', r"config .*c\.json: 'hidden' must be a positive integer, got 'big'; fix it in .*c\.json"),
    (b'{"data": 5}', r"'data' must be a string, got 5; fix it in .*\(pass it as text: a file path or a corpus name\)"),
    (b'{"split": 5}', r"'split' must be three fractions"),
    (b'{"model": [1]}', r"'model' \[1\] is unknown; fix it in .*\(use one of scratch, concise\)"),
])
def test_a_bad_config_file_is_refused_by_file_and_key(call, tmp_path: Path, text: bytes, words: str) -> None:
    (tmp_path / "c.json").write_bytes(text)
    user_error(call(["train", "--config", "c.json", "--out", "run"], tmp_path), words)
    assert not (tmp_path / "run").exists()


# 5. One writer of a run directory ------------------------------------------------------------------------------


def test_a_second_writer_is_refused_naming_the_first(call, tmp_path: Path) -> None:
    """While a process holds a run directory, `train --resume` and `train --out --force` into it exit 2 naming
    that process, and touch nothing; once it lets go, the resume goes on."""
    first = call(["train", *TINY, "--out", "run"], tmp_path)
    assert first.returncode == 0, first.stderr
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != rundir.LOCK}
    with rundir.writing(tmp_path / "run"):
        for argv in (["train", "--resume", "run"], ["train", *TINY, "--out", "run", "--force"]):
            user_error(call(argv, tmp_path), rf"run is being written by process {os.getpid()} \(.*\); wait for it")
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file() and p.name != rundir.LOCK} == before
    assert call(["train", "--resume", "run"], tmp_path).returncode == 0


def test_a_killed_writer_leaves_no_stale_lock(start_python, tmp_path: Path) -> None:
    """The lock is the kernel's: kill -9 of the process holding it frees the directory at once."""
    code = ("import sys, time\nfrom jaxrnn import rundir\nwith rundir.writing(sys.argv[1]):\n"
            "    print('held', flush=True)\n    time.sleep(120)")
    holder = start_python(["-c", code, str(tmp_path / "run")], tmp_path)
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(JaxrnnError, match=rf"is being written by process {holder.pid} "):
        with rundir.writing(tmp_path / "run"):
            pass
    holder.kill()
    holder.wait()
    with rundir.writing(tmp_path / "run"):
        assert f"process {os.getpid()} " in (tmp_path / "run" / rundir.LOCK).read_text()


def test_a_failed_command_exits_whatever_threads_still_run(run_python, tmp_path: Path) -> None:
    """`jaxrnn` exits with its status once its line is out, even with a thread that never ends (orbax's, after
    a save that failed): the process does not wait for it."""
    code = ("import threading, time\nfrom jaxrnn import cli\nthreading.Thread(target=time.sleep, args=(600,)).start()\n"
            "cli.main = lambda: 2\ncli.entry()")
    proc = run_python(["-c", code], tmp_path, timeout=60)
    assert proc.returncode == 2


# 6. A full disk: whole records, the real cause, and a finished run that says so -------------------------------


@pytest.mark.parametrize(("errno_", "advice"), [(28, "free disk space on the filesystem of"),
                                                (13, "make .* writable")])
def test_a_failed_metrics_rewrite_names_its_cause(monkeypatch, tmp_path: Path, errno_: int, advice: str) -> None:
    """Resuming on a full disk says to free space; on an unwritable directory, to make it writable."""
    def fail(path, text):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(rundir, "write_text", fail)
    with pytest.raises(JaxrnnError, match=rf"\({os.strerror(errno_)}\); {advice}"):
        rundir.rewrite_metrics(tmp_path, [{"epoch": 1}])


def test_pictures_and_samples_that_cannot_be_written_do_not_end_a_run(call, tmp_path: Path, monkeypatch) -> None:
    """The disk fills up under curves.png and samples.txt: warnings on stderr, and the finished run prints its
    result line and exits 0 with its checkpoint saved."""
    def no_space(*args, **kwargs):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(artifacts, "plot_curves", no_space)
    real_open = open
    monkeypatch.setattr(artifacts, "open", lambda f, *a, **k: no_space() if Path(f).name == artifacts.SAMPLES
                        else real_open(f, *a, **k), raising=False)
    proc = call(["train", *[f for f in TINY if f != "--no-curves"], "--out", "run"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("perplexity "), proc.stderr
    for name in (artifacts.CURVES, artifacts.SAMPLES):
        assert re.search(rf"jaxrnn: warning: cannot write .*run/{name} \(No space left on device\); the run goes on "
                         r"without it \(free disk space", proc.stderr), proc.stderr
    assert (tmp_path / "run" / "checkpoints" / "1").is_dir()


# 7. Silent and invalid --------------------------------------------------------------------------------------


def test_steps_and_epochs_together_are_refused(call, tmp_path: Path) -> None:
    user_error(call(["train", "--steps", "10", "--epochs", "3"], tmp_path),
               r"--epochs 3 would be ignored: this run trains for 10 optimizer steps \(--steps\); drop --epochs")
    user_error(call(["train", "--preset", "shakespeare-cpu", "--epochs", "3"], tmp_path),
               r"trains for 1550 optimizer steps \(--preset shakespeare-cpu\)")


def test_an_overflowing_perplexity_stops_the_run_as_a_nonfinite_loss_does(call, tmp_path: Path) -> None:
    """--lr 1e30: the loss stays finite but its perplexity overflows: exit 2 naming the step, nothing recorded
    (no `Infinity` in metrics.jsonl), and no advice to skip steps, which would not skip a finite loss."""
    last = user_error(call(["train", *TINY, "--lr", "1e30", "--out", "run"], tmp_path),
                      r"the training loss became too large for a perplexity \([\d.e+]+ nats: exp overflows\) at "
                      r"epoch 1, step \d+ \(no checkpoint was saved before it\); lower --lr or --clip$")
    assert "--skip-nonfinite" not in last
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""


def test_every_json_jaxrnn_writes_is_strict(tmp_path: Path, capsys) -> None:
    """nan and inf reach the files and lines as null: metrics.jsonl, --json's lines, and the checkpoint's meta."""
    from jaxrnn.progress import Progress

    record = {"epoch": 1, "train_loss": math.nan, "train_ppl": math.inf, "val_ppl": 7.0}
    rundir.append_metrics(tmp_path, [record])
    rundir.rewrite_metrics(tmp_path, [record, {**record, "epoch": 2}])
    assert [strict(line)["train_ppl"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [None] * 2
    Progress(2, "quiet", as_json=True, out=(out := io.StringIO()))({**record, "val_ppl": math.inf, "seconds": 1.0})
    assert strict(out.getvalue())["val_ppl"] is None
    meta = checkpoint.Meta(Config().to_dict(), ("a", "b"), "a", 1, None, math.inf, math.nan)
    checkpoint.save(tmp_path, 1, {"w": jax.numpy.zeros(2)}, meta)
    text = next((tmp_path / "checkpoints" / "1" / "meta").rglob("metadata")).read_text()
    assert strict(text)["val_ppl"] is None
    assert strict_json.dumps([math.nan, {"x": -math.inf}]) == '[null, {"x": null}]'


def test_more_devices_than_cores_are_named(run_python, tmp_path: Path) -> None:
    """--devices twice the cores: it trains, and says on stderr what it used and what is fastest."""
    from jaxrnn.parallel import usable_cores

    n = 2 * usable_cores()
    flags = [*TINY[:6], "--batch-size", str(8 * n), *TINY[8:]]
    proc = run_python(["-m", "jaxrnn.cli", "train", *flags, "--devices", str(n), "--out", "run"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (f"jaxrnn: note: training on {n} CPU devices that share this machine's {usable_cores()} cores (one device "
            f"per core is fastest: --devices {usable_cores()})") in proc.stderr


def test_a_signal_in_the_last_chunk_still_ends_with_the_result(start_python, tmp_path: Path) -> None:
    """SIGINT as the last checkpoint is saved: the run is complete, so it prints its result and exits 0."""
    proc = start_python(["-m", "jaxrnn.cli", "train", *TINY, "--out", "run"], tmp_path, JAXRNN_FAULT="save:1:SIGINT")
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert re.fullmatch(r"perplexity \d+\.\d, '.{64}'\n", out), out
    assert err.splitlines()[-1] == "jaxrnn: SIGINT came as the run completed; its result is above", err


# 8. What the help says ------------------------------------------------------------------------------------------


def test_the_window_flag_and_the_help_texts_say_what_they_mean() -> None:
    """--window is d2l's --num-steps, listed first; sample's --step and --top-k say what their values mean."""
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--window", "7"]).num_steps == 7 == \
        parser.parse_args(["train", "--num-steps", "7"]).num_steps
    sub = parser._subparsers._group_actions[0].choices
    assert re.search(r"^  --window WINDOW, --num-steps WINDOW\n", sub["train"].format_help(), re.M)
    sample = " ".join(sub["sample"].format_help().split())
    assert "the optimizer step in a run by --steps" in sample and "(default 0: off, every character)" in sample


def test_plot_legends_name_runs_by_their_shortest_distinct_paths(tmp_path: Path, monkeypatch) -> None:
    from jaxrnn.plots import legend_names

    drawn = {}
    monkeypatch.setattr("jaxrnn.plots.plot_curves", lambda histories, path, log_scale: drawn.update(histories) or path)
    for d in ("a/lstm", "b/lstm", "b/gru"):
        (tmp_path / d).mkdir(parents=True)
        rundir.append_metrics(tmp_path / d, [{"epoch": 1, "train_ppl": 9.0, "val_ppl": 8.0}])
    args = cli.parse(["plot", *(str((tmp_path / d).absolute()) for d in ("a/lstm", "b/lstm", "b/gru"))])
    assert cli.cmd_plot(args) == 0
    assert list(drawn) == ["a/lstm", "b/lstm", "b/gru"]  # the same number of trailing parts for every run
    assert legend_names(["/very/long/absolute/runs/concise", "runs/lstm"]) == ["concise", "lstm"]


# 9. Messages that lead somewhere ----------------------------------------------------------------------------


def test_messages_lead_to_what_to_do(call, tmp_path: Path, monkeypatch) -> None:
    """A run given as a file; a text with no letters under d2l's reading; a resume whose corpus is gone (and
    no advice to pass --data, which --resume refuses)."""
    (tmp_path / "file").write_text("not a run")
    user_error(call(["sample", "--run", "file"], tmp_path), r"file is a file, not a run directory; pass --run with")
    (tmp_path / "cjk.txt").write_text("时间旅行者 🙂 " * 50)
    user_error(call(["train", *TINY, "--data", "cjk.txt", "--out", "cjk"], tmp_path),
               r"has no letters A-Z, which is all d2l's preprocessing keeps; pass --preprocessing none")
    text = tmp_path / "text.txt"
    text.write_text((Path(os.environ["JAXRNN_DATA_DIR"]) / "timemachine.txt").read_text()[:20000])
    assert call(["train", *TINY, "--data", "text.txt", "--out", "gone"], tmp_path).returncode == 0
    text.unlink()
    last = user_error(call(["train", "--resume", "gone"], tmp_path),
                      r"text\.txt, the corpus gone trains on, is gone; put the file back at that path \(sha1 \w{40}\)")
    assert "--data" not in last


def test_an_offline_named_corpus_says_a_copy_works(monkeypatch, tmp_path: Path, named_head: str) -> None:
    """Offline, `--data tinyshakespeare` suggests a copy of it by --data, which (point 1) reads as it."""
    monkeypatch.setenv("JAXRNN_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setattr(data, "CHECKOUT_DATA", tmp_path / "checkout")
    monkeypatch.setattr(data.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(JaxrnnError, match=rf"or pass --data with a copy of it \(sha1 {named_head}: a file with those "
                                          r"bytes is read as the named corpus is\)"):
        data.find_corpus("tinyshakespeare")
