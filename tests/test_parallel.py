"""parallel.py: data-parallel training on 8 CPU devices equals 1 device; batch sizes that do not split.

The 8-device runs happen in a subprocess (`--xla_force_host_platform_device_count=8`), so that this
process keeps its one CPU device, which is also where a checkpoint saved on 8 devices is restored.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrnn import checkpoint, faults, parallel, run
from jaxrnn.errors import ConfigError

EIGHT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from jaxrnn import run
    from jaxrnn.config import Config
    assert jax.device_count() == 8, jax.devices()
    out = {}
    for k, c in enumerate(json.loads(sys.argv[1])):
        cfg = Config(**c)
        for n in (1, 8):
            t = run.train(cfg.replace(devices=n), sys.argv[2] if (k, n) == (0, 8) else None)
            leaves = jax.tree.leaves(t.params)
            assert n == 1 or all(len(a.sharding.device_set) == 8 for a in leaves)  # replicated on all 8
            np.savez(f"{sys.argv[3]}/params{k}_{n}.npz", *[np.asarray(a) for a in leaves])
            out[f"{k}_{n}"] = [[r["train_loss"], r["val_loss"]] for r in t.history]
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def eight(tmp_path_factory, run_python, tiny_cfg):
    """Train the tiny config for 3 epochs, and 2 epochs of sequential batches with the state carried
    (split over the devices with the batch), on 1 and on 8 devices of one subprocess."""
    work = tmp_path_factory.mktemp("eight")
    cfgs = [tiny_cfg(epochs=3, model="scratch").to_dict(),
            tiny_cfg(epochs=2, cell="lstm", batching="sequential", batch_size=16).to_dict()]
    env_flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{env_flags} --xla_force_host_platform_device_count=8"
    try:
        proc = run_python(["-c", EIGHT, json.dumps(cfgs), str(work / "run8"), str(work)], work)
    finally:
        os.environ["XLA_FLAGS"] = env_flags
    assert proc.returncode == 0, proc.stderr
    losses = json.loads(proc.stdout)
    params = {key: list(np.load(work / f"params{key}.npz").values()) for key in losses}
    return work, losses, params


@pytest.mark.parametrize("k", [0, 1], ids=["random", "sequential-lstm"])
def test_eight_devices_train_like_one(eight, k: int) -> None:
    """Same losses every epoch and same params after 12 (random) or 8 (sequential) steps, up to float32
    rounding: the only difference is the order in which the batch's gradient sums are added."""
    _, losses, params = eight
    np.testing.assert_allclose(losses[f"{k}_8"], losses[f"{k}_1"], rtol=1e-5)
    for a8, a1 in zip(params[f"{k}_8"], params[f"{k}_1"], strict=True):
        np.testing.assert_allclose(a8, a1, rtol=1e-4, atol=1e-6)


def test_checkpoint_saved_on_eight_devices_restores_on_one(eight) -> None:
    work, _, params = eight
    t = run.load(work / "run8")
    leaves = jax.tree.leaves(t.params)
    assert all(len(a.sharding.device_set) == 1 for a in leaves)
    for got, want in zip(leaves, params["0_8"], strict=True):
        np.testing.assert_array_equal(np.asarray(got), want)
    assert t.predict("time traveller", 10).startswith("time traveller")


@pytest.mark.parametrize("batch, devices, nearest", [(1000, 3, (999, 1002)), (2, 4, (4,)), (10, 4, (8, 12))])
def test_batch_that_does_not_split_names_the_nearest_sizes(batch: int, devices: int, nearest) -> None:
    assert parallel.nearest_batches(batch, devices) == nearest
    with pytest.raises(ConfigError) as e:
        parallel.check_divides(batch, devices)
    assert all(f"{b}" in str(e.value) for b in nearest) and "--batch-size" in str(e.value)
    with pytest.raises(ConfigError, match="processes whose device counts add up to a divisor") as e:
        parallel.check_divides(batch, devices, processes=2)  # a distributed run refuses --devices
    assert "--devices" not in str(e.value)


@pytest.mark.parametrize("batch, cores, want", [(1024, 2, 2), (1024, 3, 2), (999, 4, 3), (7, 2, 1), (64, 16, 16)])
def test_cpu_devices_split_the_batch(batch: int, cores: int, want: int) -> None:
    assert parallel.cpu_devices_for(batch, cores) == want


@pytest.mark.parametrize("batch, cores, processes, want", [(6, 6, 2, 3), (6, 4, 2, 3), (8, 3, 2, 2), (9, 4, 2, 3)])
def test_processes_pick_cpu_devices_that_split_the_batch_together(monkeypatch, batch: int, cores: int,
                                                                  processes: int, want: int) -> None:
    """Each of `processes` like processes makes devices that split its share, so together they split the
    batch (6 over 2 processes of 6 cores: 3 each, not 6 + 6 = 12); a batch they cannot share evenly
    falls back to the one-process rule."""
    made = []
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.setattr(parallel, "usable_cores", lambda: cores)
    monkeypatch.setattr(parallel.jax.config, "update", lambda name, n: made.append(n))
    parallel.use_cpu_cores(None, batch, processes)
    assert made == [want]
    if batch % processes == 0:
        assert batch % (want * processes) == 0


def test_cli_refuses_devices_that_do_not_split_the_batch(run_python, tmp_path: Path) -> None:
    proc = run_python(["-m", "jaxrnn.cli", "train", "--batch-size", "100", "--devices", "3", "--epochs", "1",
                       "--out", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("jaxrnn: error: batch size 100 does not split over 3 devices") and "99 or 102" in last


# Two processes of 2 CPU devices each, joined by jax.distributed (gloo between them), against one process
# of 4 devices: the same global mesh size, so the same batch split, on two "hosts".
HOST_FLAGS = ["--model", "scratch", "--epochs", "2", "--save-every", "1", "--no-curves", "--hidden", "16",
              "--num-train", "512", "--num-val", "256", "--batch-size", "128", "--num-steps", "8"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def on_hosts(start_python, work: Path, args: list[str], processes: int,
             env: dict[int, dict[str, str]] | None = None) -> list[subprocess.Popen]:
    """Start `jaxrnn ARGS` as `processes` processes of one distributed run, each with 4 / processes CPU devices
    (and the environment variables `env[process id]`)."""
    port, procs = free_port(), []
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count={4 // processes}")
        for i in range(processes):
            launch = ["--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes),
                      "--process-id", str(i)] if processes > 1 else []
            procs.append(start_python(["-m", "jaxrnn.cli", "train", *args, *launch], work, **(env or {}).get(i, {})))
    return procs


def finished(procs: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    """(exit status, stdout, stderr) of each process, in order; a process still running after 4 minutes
    (a hang) is killed, and so are its peers."""
    try:
        outputs = [p.communicate(timeout=240) for p in procs]
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        raise
    return [(p.returncode, *o) for p, o in zip(procs, outputs)]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory, start_python) -> tuple[Path, dict[str, list[tuple[int, str, str]]]]:
    """A 2-process run and the 1-process reference, at once; then, at once, a copy of the 2-process run
    cut back to its first checkpoint resumed by 2 processes, and 2 processes refused the reference's
    directory (process 0 alone checks it)."""
    work = tmp_path_factory.mktemp("hosts")
    started = {"two": on_hosts(start_python, work, [*HOST_FLAGS, "--out", str(work / "two")], 2),
               "one": on_hosts(start_python, work, [*HOST_FLAGS, "--out", str(work / "one")], 1)}
    done = {k: finished(v) for k, v in started.items()}
    shutil.copytree(work / "two", work / "resumed")
    shutil.rmtree(work / "resumed" / "checkpoints" / "2")
    started = {"resumed": on_hosts(start_python, work, ["--resume", str(work / "resumed")], 2),
               "refused": on_hosts(start_python, work, [*HOST_FLAGS, "--out", str(work / "one")], 2)}
    done.update({k: finished(v) for k, v in started.items()})
    return work, done


@pytest.mark.slow  # two jaxrnn processes of one distributed run: 20-30 s each on 2 cores
def test_two_processes_train_like_one_with_four_devices(hosts) -> None:
    """Same metrics and parameters (float32 rounding: gloo adds the gradient sums in its own order);
    process 0 prints the result line, process 1 nothing; the checkpoint restores in this 1-device process."""
    work, done = hosts
    for rc, _, err in done["two"] + done["one"]:
        assert rc == 0 and "Traceback" not in err, err
    assert done["two"][0][1] == done["one"][0][1] and done["two"][1][1] == ""
    for name in ("two", "one"):  # process 0 alone wrote each line
        assert len((work / name / "metrics.jsonl").read_text().splitlines()) == 2
        assert (work / name / "samples.txt").read_text() == (work / "one" / "samples.txt").read_text()
    two, one = run.load(work / "two"), run.load(work / "one")
    for k in ("train_loss", "val_loss"):
        np.testing.assert_allclose([r[k] for r in two.history], [r[k] for r in one.history], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(two.params), jax.tree.leaves(one.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.slow  # two jaxrnn processes of one distributed run: 20-30 s each on 2 cores
def test_two_processes_resume_a_run(hosts) -> None:
    """Resumed from its first checkpoint by 2 processes, the run ends as the uninterrupted one."""
    work, done = hosts
    for rc, _, err in done["resumed"]:
        assert rc == 0 and "Traceback" not in err, err
    assert done["resumed"][0][1] == done["two"][0][1]
    resumed, two = run.load(work / "resumed"), run.load(work / "two")
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    assert len((work / "resumed" / "metrics.jsonl").read_text().splitlines()) == 2
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(two.params), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # two jaxrnn processes of one distributed run: 20-30 s each on 2 cores
def test_an_error_of_process_0_stops_every_process(hosts) -> None:
    """Process 0 refuses a directory that holds a run; process 1 does not wait for it in a barrier but
    exits 2 too, naming process 0; the run is left as it was."""
    work, done = hosts
    (rc0, out0, err0), (rc1, out1, err1) = done["refused"]
    assert (rc0, rc1, out0, out1) == (2, 2, "", ""), (err0, err1)
    assert "already holds a run" in err0.splitlines()[-1] and "Traceback" not in err0 + err1
    assert err1.splitlines()[-1].startswith("jaxrnn: error: process 0 stopped with an error")
    assert len((work / "one" / "metrics.jsonl").read_text().splitlines()) == 2


@pytest.mark.slow  # two jaxrnn processes of one distributed run: 20-30 s each on 2 cores
def test_a_signal_to_one_process_stops_both_after_the_same_chunk(start_python, tmp_path: Path) -> None:
    """SIGTERM to process 1 alone (it signals itself as the save of epoch 2 begins, jaxrnn/faults.py): both
    processes stop (exit 128 + 15) with that chunk's checkpoint saved, instead of process 0 waiting for
    process 1 in the next all-reduce; two processes resume it to the end."""
    run_dir = tmp_path / "run"
    fault = {1: {faults.ENV: "save:2:SIGTERM"}}
    procs = on_hosts(start_python, tmp_path, [*HOST_FLAGS, "--epochs", "4", "--out", str(run_dir)], 2, fault)
    (rc0, _, err0), (rc1, _, err1) = finished(procs)
    assert (rc0, rc1) == (128 + signal.SIGTERM, 128 + signal.SIGTERM), (err0, err1)
    assert "stopped by SIGTERM after epoch 2" in err0 and "after epoch 2" in err1
    assert checkpoint.steps(run_dir) == [1, 2]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2
    resumed = finished(on_hosts(start_python, tmp_path, ["--resume", str(run_dir)], 2))
    assert [rc for rc, _, _ in resumed] == [0, 0], resumed[0][2]
    assert f"resuming {run_dir} at epoch 2" in resumed[0][2]
    assert [r["epoch"] for r in run.load(run_dir).history] == list(range(1, 5))
