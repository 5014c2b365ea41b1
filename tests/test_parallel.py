"""parallel.py: data-parallel training on 8 CPU devices equals 1 device; batch sizes that do not split.

The 8-device runs happen in a subprocess (`--xla_force_host_platform_device_count=8`), so that this
process keeps its one CPU device, which is also where a checkpoint saved on 8 devices is restored.
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxrnn import parallel, run
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


@pytest.mark.parametrize("batch, cores, want", [(1024, 2, 2), (1024, 3, 2), (999, 4, 3), (7, 2, 1), (64, 16, 16)])
def test_cpu_devices_split_the_batch(batch: int, cores: int, want: int) -> None:
    assert parallel.cpu_devices_for(batch, cores) == want


def test_cli_refuses_devices_that_do_not_split_the_batch(run_python, tmp_path: Path) -> None:
    proc = run_python(["-m", "jaxrnn.cli", "train", "--batch-size", "100", "--devices", "3", "--epochs", "1",
                       "--out", str(tmp_path / "r")], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("jaxrnn: error: batch size 100 does not split over 3 devices") and "99 or 102" in last
