"""The training tool around the library: progress, --json, run-directory artifacts (config with data
sha1 and versions, curves.png, samples.txt, TensorBoard), --config, `jaxrnn runs` and `jaxrnn plot`."""

from __future__ import annotations

import io
import json
import re
import shutil
import struct
import time
from pathlib import Path

import jax
import matplotlib.image
import pytest

from jaxrnn import checkpoint, cli, data, run, rundir
from jaxrnn.config import PRESETS, Config
from jaxrnn.models import build_model
from jaxrnn.progress import Progress

FLAGS = ["--hidden", "16", "--num-train", "512", "--num-val", "256", "--batch-size", "128", "--num-steps", "8",
         "--unroll", "1"]
RECORD = {"epoch": 3, "train_loss": 2.0, "train_ppl": 7.389, "val_loss": 2.1, "val_ppl": 8.166, "skipped_steps": 0,
          "seconds": 0.5, "tokens_per_s": 123456.0}


@pytest.fixture(scope="module")
def json_run(tmp_path_factory) -> tuple[Path, list[str]]:
    """A 4-epoch run saving every 2 epochs, with --json and --tensorboard: its run dir and stdout lines."""
    out = tmp_path_factory.mktemp("tool") / "run"
    with pytest.MonkeyPatch.context() as mp:
        buf = io.StringIO()
        mp.setattr("sys.stdout", buf)
        code = cli.main(["train", *FLAGS, "--epochs", "4", "--save-every", "2", "--json", "--tensorboard",
                         "--out", str(out)])
    assert code == 0
    return out, buf.getvalue().splitlines()


def test_progress_lines_json_and_quiet() -> None:
    err, out = io.StringIO(), io.StringIO()
    p = Progress(10, "lines", as_json=True, err=err, out=out)
    p(RECORD)
    p({**RECORD, "epoch": 4, "skipped_steps": 2})
    p.close()
    lines = err.getvalue().splitlines()
    assert re.fullmatch(r"epoch 3/10  train ppl 7\.39  val ppl 8\.17  123k tok/s  eta \d+:\d\d", lines[0])
    assert lines[1].startswith("epoch 4/10") and "2 steps skipped" in lines[1]
    assert [json.loads(line)["epoch"] for line in out.getvalue().splitlines()] == [3, 4]
    err = io.StringIO()
    quiet = Progress(10, "quiet", err=err)
    quiet(RECORD)
    assert err.getvalue() == ""
    bar = Progress(10, "bar", err=err)
    bar(RECORD)
    bar.close()
    assert "3/10" in err.getvalue() and "val ppl 8.17" in err.getvalue()  # a tqdm bar resumed at epoch 2


def test_json_output_is_one_object_per_epoch_then_the_result(json_run) -> None:
    out, lines = json_run
    objs = [json.loads(line) for line in lines]
    assert [o["epoch"] for o in objs[:4]] == [1, 2, 3, 4]
    assert objs[:4] == rundir.read_metrics(out)
    final = objs[4]
    assert len(objs) == 5 and final["run_dir"] == str(out) and final["epoch"] == 4
    assert final["perplexity"] == objs[3]["val_ppl"] and final["sample"].startswith("time traveller")
    assert len(final["sample"]) == len("time traveller") + 50


def test_run_dir_records_config_data_and_versions(json_run) -> None:
    out, _ = json_run
    saved = json.loads((out / rundir.CONFIG).read_text())
    assert saved["data_sha1"] == data.TIMEMACHINE_SHA1
    assert saved["versions"]["jax"] == jax.__version__ and set(saved["versions"]) >= {"python", "flax", "optax",
                                                                                        "orbax-checkpoint", "numpy"}
    assert saved["hidden"] == 16 and saved["tensorboard"] is True


def test_samples_and_curves_at_each_save(json_run) -> None:
    out, lines = json_run
    samples = (out / "samples.txt").read_text().splitlines()
    metrics = rundir.read_metrics(out)
    final = json.loads(lines[-1])
    assert [s.split("  ")[0] for s in samples] == ["epoch 2", "epoch 4"]
    assert samples[1] == f"epoch 4  val ppl {metrics[3]['val_ppl']:.2f}  {final['sample']!r}"
    image = matplotlib.image.imread(out / "curves.png")
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300
    assert not (out / "curves.png.tmp").exists()


def read_events(path: Path) -> list:
    """The records of a TensorBoard event file (TFRecord framing: length, crc, payload, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    raw, events, i = path.read_bytes(), [], 0
    while i < len(raw):
        (n,) = struct.unpack("<Q", raw[i:i + 8])
        events.append(Event.FromString(raw[i + 12:i + 12 + n]))
        i += 12 + n + 4
    return events


def test_tensorboard_events_hold_the_metrics(json_run) -> None:
    out, _ = json_run
    files = list((out / "tb").glob("events.out.tfevents.*"))
    assert len(files) == 1
    scalars = {(v.tag, e.step): v.simple_value for e in read_events(files[0]) for v in e.summary.value
               if v.HasField("simple_value")}
    for r in rundir.read_metrics(out):  # every number a record holds, by its own key
        numbers = {k for k, v in r.items() if isinstance(v, (int, float)) and k not in ("epoch", "step")}
        assert numbers >= {"val_ppl", "train_ppl", "train_loss", "val_bpc", "skipped_steps"}
        for key in numbers:
            assert scalars[(key, r["epoch"])] == pytest.approx(r[key], rel=1e-6), key


def test_saved_config_reproduces_the_run(json_run, tmp_path: Path, capsys) -> None:
    """`train --config RUN_DIR/config.json` trains the same run again: the same metrics, bit for bit;
    a flag after it overrides the saved value."""
    out, _ = json_run
    again = tmp_path / "again"
    assert cli.main(["train", "--config", str(out / rundir.CONFIG), "--quiet", "--out", str(again)]) == 0
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr
    drop = ("seconds", "tokens_per_s")
    strip = [{k: v for k, v in r.items() if k not in drop} for r in rundir.read_metrics(out)]
    assert [{k: v for k, v in r.items() if k not in drop} for r in rundir.read_metrics(again)] == strip
    assert cli.main(["train", "--config", str(out / rundir.CONFIG), "--epochs", "1", "--quiet", "--out",
                     str(tmp_path / "short")]) == 0
    assert len(rundir.read_metrics(tmp_path / "short")) == 1
    assert cli.main(["train", "--config", str(out / rundir.CONFIG), "--preset", "d2l-scratch", "--out",
                     str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith("jaxrnn: error: --preset and --config")


def test_resume_refuses_a_changed_corpus(tmp_path: Path, capsys) -> None:
    corpus = tmp_path / "text.txt"
    shutil.copy(data.find_corpus(), corpus)
    out = tmp_path / "run"
    flags = [*FLAGS, "--epochs", "2", "--save-every", "1", "--data", str(corpus), "--quiet", "--no-curves"]
    assert cli.main(["train", *flags, "--epochs", "1", "--out", str(out)]) == 0
    assert (out / "samples.txt").is_file() and not (out / "curves.png").exists()
    saved = json.loads((out / rundir.CONFIG).read_text())
    saved["epochs"] = 2
    (out / rundir.CONFIG).write_text(json.dumps(saved))  # as if stopped after epoch 1 of 2
    corpus.write_text(corpus.read_text() + "\nmore text\n")
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(out)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"jaxrnn: error: the corpus {corpus} has changed since {out} started") and "--out" in last


def test_runs_lists_each_run_with_its_best_val_ppl(json_run, tmp_path: Path, capsys, monkeypatch) -> None:
    """One row per run under a header: a path `--run` takes (from the working directory), the best
    validation perplexity and its epoch, the best checkpoint's epoch (what --step best loads), epochs."""
    out, _ = json_run
    root = tmp_path / "root"
    shutil.copytree(out, root / "a" / "first")
    shutil.copytree(out, root / "second")
    (root / "second" / rundir.METRICS).write_text("")  # a run that has not finished an epoch
    metrics = rundir.read_metrics(out)
    best = min(metrics, key=lambda r: r["val_ppl"])
    saved = min((r for r in metrics if r["epoch"] in checkpoint.steps(out)), key=lambda r: r["val_ppl"])
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert cli.main(["runs", "root"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert rows[0] == ["run", "best", "val", "ppl", "at", "best", "saved", "done", "model"]
    assert rows[1] == ["root/a/first", f"{best['val_ppl']:.2f}", str(best["epoch"]), str(saved["epoch"]), "4/4",
                       "epochs", "scratch"]
    assert rows[2] == ["root/second", "-", "-", str(saved["epoch"]), "0/4", "epochs", "scratch"]
    assert len(rows) == 3
    assert cli.main(["sample", "--run", rows[1][0], "--step", "best", "--num-preds", "3"]) == 0


def test_plot_overlays_runs_and_refuses_an_empty_one(json_run, tmp_path: Path, capsys) -> None:
    out, _ = json_run
    target = tmp_path / "both.png"
    assert cli.main(["plot", str(out), str(out), "--out", str(target), "--log"]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    assert matplotlib.image.imread(target).shape[0] > 200
    (tmp_path / "empty").mkdir()
    assert cli.main(["plot", str(tmp_path / "empty"), "--out", str(target)]) == 2
    assert "has no epochs in metrics.jsonl" in capsys.readouterr().err


def test_eta_counts_trained_epochs_not_compiling() -> None:
    """The ETA is the epochs' own seconds (compilation, saves and sampling excluded) times those left."""
    err = io.StringIO()
    p = Progress(10, "lines", err=err)
    p({**RECORD, "epoch": 1, "seconds": 2.0})  # however long the first chunk took to compile
    p({**RECORD, "epoch": 2, "seconds": 4.0})
    assert [line.rsplit("eta ", 1)[1] for line in err.getvalue().splitlines()] == ["0:18", "0:24"]


def test_a_long_chunk_shows_a_line_every_heartbeat() -> None:
    """While a chunk runs past the heartbeat, lines say which epoch is running and for how long; none
    come once `watching` ends, nor in quiet mode."""
    err = io.StringIO()
    p = Progress(10, "lines", err=err, heartbeat=0.05)
    with p.watching(2):
        time.sleep(0.3)  # the first chunk after epoch 2 compiles and trains
        p({**RECORD, "epoch": 3, "seconds": 4.0})
        time.sleep(0.3)
    time.sleep(0.2)
    lines = err.getvalue().splitlines()
    first = lines.index(next(line for line in lines if line.startswith("epoch 3/10  train ppl")))
    assert first >= 2 and all(line == "epoch 2/10 done; epoch 3 running 0:00 (rate and ETA follow it)"
                              for line in lines[:first]), lines
    later = lines[first + 1:]
    assert len(later) >= 2 and all(line == "epoch 3/10 done; epoch 4 running 0:00 (one epoch took 0:04)"
                                   for line in later), lines
    count = len(lines)
    time.sleep(0.2)
    assert len(err.getvalue().splitlines()) == count  # stopped with the `with` block
    by_steps = io.StringIO()  # a run by steps: a round of 200 steps, not 'step 200/600', which reads as reached
    p = Progress(600, "lines", err=by_steps, unit="step", span=200, heartbeat=0.05)
    with p.watching(0):
        p.phase("compiling")  # as fit says
        time.sleep(0.2)
        p.phase("training")
        time.sleep(0.2)
    lines = by_steps.getvalue().splitlines()
    assert lines[0] == "step 0/600 done; steps 1-200 compiling 0:00", lines
    assert lines[-1] == "step 0/600 done; steps 1-200 training 0:00 (rate and ETA follow it)", lines
    quiet = io.StringIO()
    with Progress(10, "quiet", err=quiet, heartbeat=0.01).watching(0):
        time.sleep(0.1)
    assert quiet.getvalue() == ""


def test_python_api_shows_progress_unless_told_not_to(tiny_cfg, tiny_corpus, capsys) -> None:
    """`jaxrnn.train` shows the CLI's progress lines on stderr; `progress=False` shows nothing."""
    run.train(tiny_cfg(epochs=2), corpus=tiny_corpus)
    captured = capsys.readouterr()
    assert re.search(r"^epoch 2/2  train ppl [\d.]+  val ppl [\d.]+ .* eta 0:00$", captured.err, re.M), captured.err
    assert captured.out == ""
    run.train(tiny_cfg(epochs=2), corpus=tiny_corpus, progress=False)
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_build_and_flags_override_them(name: str) -> None:
    """Each preset is a valid config whose model builds (shapes only); a flag after --preset wins."""
    cfg = PRESETS[name]
    shapes = jax.eval_shape(build_model(cfg, 28).init, jax.random.key(0))
    assert jax.tree.leaves(shapes)
    args = cli.build_parser().parse_args(["train", "--preset", name, "--clip", "3", "--seed", "5"])
    assert cli.config_from_args(args) == cfg.replace(clip=3.0, seed=5)


def test_d2l_presets_are_the_chapters_settings() -> None:
    seed = dict(hidden=32, batch_size=1024, num_steps=32, lr=1.0, clip=1.0, epochs=100, optimizer="sgd")
    assert PRESETS["d2l-scratch"] == Config(**seed) and PRESETS["d2l-concise"] == Config(impl="flax", **seed)
    assert (PRESETS["d2l-lstm"].cell, PRESETS["d2l-lstm"].lr, PRESETS["d2l-lstm"].epochs) == ("lstm", 4.0, 50)
    d2l_gru = PRESETS["d2l-gru"]
    assert d2l_gru.cell == "gru-d2l" and Config(cell="gru", gru_reset="before") == d2l_gru.replace(lr=1.0, epochs=100)


def test_train_refuses_a_corpus_its_config_does_not_describe(tiny_cfg, tiny_corpus, tmp_path: Path) -> None:
    """`train(cfg, corpus=...)` records `cfg` in the run directory and a resume reads the corpus as `cfg`
    says, so a corpus windowed otherwise, read from another file or preprocessed otherwise is refused
    before any training."""
    from jaxrnn.errors import ConfigError

    with pytest.raises(ConfigError, match=r"the corpus has 9-character windows, .* but the config asks for 17-"):
        run.train(tiny_cfg(num_steps=16), corpus=tiny_corpus)
    other = tmp_path / "other.txt"
    other.write_text(data.read_text(tiny_corpus.path)[0][::-1])  # same length, so the same window counts
    elsewhere = data.load_corpus(other, tiny_corpus.num_steps, 512, 256)
    with pytest.raises(ConfigError, match=r"read from .*other\.txt, but the config names timemachine \(sha1 090b"):
        run.train(tiny_cfg(), corpus=elsewhere)
    with pytest.raises(ConfigError, match=r"read from .*timemachine\.txt, but the config names .*other\.txt"):
        run.train(tiny_cfg(data=str(other)), corpus=tiny_corpus)
    as_is = data.load_corpus(None, tiny_corpus.num_steps, 512, 256, preprocessing="none")
    with pytest.raises(ConfigError, match=r"read with --preprocessing none, but the config asks for d2l"):
        run.train(tiny_cfg(), corpus=as_is)
    assert not (tmp_path / "runs").exists()
