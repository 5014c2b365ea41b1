"""checkpoint.py and run.load: a run restored in a fresh process is the run that was trained."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxrnn
from jaxrnn import checkpoint
from jaxrnn.errors import CheckpointError, Damaged, JaxrnnError
from jaxrnn.models import ConciseRNNLM, ModelConfig, ScratchRNNLM
from jaxrnn.steps import init_state
from jaxrnn.training import make_optimizer

PROMPT = "time traveller"

# Runs in a fresh process: load the run, save every state leaf to an .npz, print the predictions as JSON.
LOAD_AND_DUMP = """
import json, re, sys
import jax, numpy as np, jaxrnn
t = jaxrnn.load(sys.argv[1])
leaves = jax.tree_util.tree_leaves_with_path(t.state._asdict())
np.savez(sys.argv[2], **{re.sub(r"\\W+", "_", jax.tree_util.keystr(p)): np.asarray(x) for p, x in leaves})
print(json.dumps({"greedy": t.predict("time traveller", 50),
                  "sampled": t.predict("time traveller", 50, temperature=1.0, seed=4),
                  "config": t.cfg.to_dict(), "vocab": list(t.vocab.idx_to_token), "history": t.history}))
"""


def state_leaves(state) -> dict[str, np.ndarray]:
    return {re.sub(r"\W+", "_", jax.tree_util.keystr(p)): np.asarray(x)
            for p, x in jax.tree_util.tree_leaves_with_path(state._asdict())}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_cfg, tiny_corpus) -> jaxrnn.Trained:
    """A tiny scratch model trained for 2 epochs into a run directory, checkpointed after each."""
    return jaxrnn.train(tiny_cfg(epochs=2), out=tmp_path_factory.mktemp("run") / "run", corpus=tiny_corpus)


def test_fresh_process_restores_the_same_model(trained, run_python, tmp_path: Path) -> None:
    proc = run_python(["-c", LOAD_AND_DUMP, str(trained.run_dir), str(tmp_path / "state.npz")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["greedy"] == trained.predict(PROMPT, 50)
    assert got["sampled"] == trained.predict(PROMPT, 50, temperature=1.0, seed=4)
    assert got["config"] == trained.cfg.to_dict()
    assert got["vocab"] == list(trained.vocab.idx_to_token)
    assert got["history"] == json.loads(json.dumps(trained.history))
    saved, want = dict(np.load(tmp_path / "state.npz")), state_leaves(trained.state)
    assert saved.keys() == want.keys() and any("W_hq" in k for k in saved)
    for k in want:
        assert saved[k].dtype == want[k].dtype and np.array_equal(saved[k], want[k]), k  # bitwise


def test_steps_lists_saved_epochs(trained) -> None:
    assert checkpoint.steps(trained.run_dir) == [1, 2]
    lines = (trained.run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert jaxrnn.Config.load(trained.run_dir / "config.json") == trained.cfg


def test_load_an_earlier_epoch(trained) -> None:
    first = jaxrnn.load(trained.run_dir, step=1)
    assert int(first.state.step) == 4  # 512 windows in batches of 128
    assert int(jaxrnn.load(trained.run_dir).state.step) == 8
    assert not np.array_equal(first.params["rnn"]["W_hh"], trained.params["rnn"]["W_hh"])
    with pytest.raises(CheckpointError, match=r"no checkpoint 7 in .* \(checkpoints are numbered by epoch, or by step"):
        jaxrnn.load(trained.run_dir, step=7)


@pytest.mark.parametrize("other", [ScratchRNNLM(ModelConfig(28, 8)), ConciseRNNLM(ModelConfig(28, 16))],
                         ids=["hidden-8", "concise"])
def test_restore_into_another_model_raises(trained, tiny_cfg, other) -> None:
    tx = make_optimizer(tiny_cfg())
    abstract = jax.eval_shape(lambda: init_state(other, tx, 0)._asdict())
    with pytest.raises(CheckpointError, match="another model"):
        checkpoint.restore_state(trained.run_dir, 2, abstract)


def test_run_without_checkpoints_raises(tmp_path: Path, tiny_cfg) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        jaxrnn.load(tmp_path)
    tiny_cfg().save(tmp_path / "config.json")  # a run that stopped before its first checkpoint
    with pytest.raises(CheckpointError, match="no checkpoint"):
        jaxrnn.load(tmp_path)
    with pytest.raises(JaxrnnError, match="does not exist"):
        jaxrnn.load(tmp_path / "missing")


def meta_at(epoch: int, val_ppl: float) -> checkpoint.Meta:
    return checkpoint.Meta({"hidden": 3}, ("a", "b"), epoch=epoch, val_ppl=val_ppl)


def save_epochs(run_dir: Path, val_ppls: list[float]) -> None:
    for epoch, val_ppl in enumerate(val_ppls, start=1):
        checkpoint.save(run_dir, epoch, {"w": jnp.arange(3.0)}, meta_at(epoch, val_ppl))


def test_keeps_the_latest_three(tmp_path: Path) -> None:
    save_epochs(tmp_path, [9.0, 8.0, 7.0, 6.0, 5.0])
    assert checkpoint.steps(tmp_path) == [3, 4, 5]
    epoch = checkpoint.resolve(tmp_path, None)
    assert epoch == 5 and checkpoint.restore_meta(tmp_path, epoch) == checkpoint.Meta(
        {"hidden": 3}, ("a", "b"), epoch=5, val_ppl=5.0, digest=checkpoint.digest({"w": jnp.arange(3.0)}))


def test_arrays_that_differ_from_their_digest_are_damaged(tmp_path: Path) -> None:
    """The meta item's digest is of the arrays saved: it matches them restored, and nothing else."""
    save_epochs(tmp_path, [9.0])
    target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    meta = checkpoint.restore_meta(tmp_path, 1)
    assert checkpoint.restore_state(tmp_path, 1, target, meta.digest)["w"].tolist() == [0.0, 1.0, 2.0]
    assert checkpoint.digest({"w": jnp.array([0.0, 1.0, 2.5])}) != meta.digest
    assert checkpoint.digest({"v": jnp.arange(3.0)}) != meta.digest  # the path counts too
    with pytest.raises(Damaged, match=r"checkpoint 1 in .* is damaged \(state: its arrays differ from those saved\)"):
        checkpoint.restore_state(tmp_path, 1, target, checkpoint.digest({"w": jnp.array([0.0, 1.0, 2.5])}))


def test_best_is_the_latest_of_equals_and_passes_over_damaged_metrics(tmp_path: Path) -> None:
    """As orbax ranks them: the lowest val_ppl, the latest of equals; an unreadable metrics record is skipped."""
    save_epochs(tmp_path, [3.0, 2.0, 2.0])
    assert checkpoint.best_step(tmp_path) == 3
    (tmp_path / "checkpoints" / "3" / "metrics" / "metrics").write_text("{")
    assert checkpoint.best_step(tmp_path) == 2
    with pytest.raises(Damaged, match=r"checkpoint 3 .* is damaged \(metrics: JSONDecodeError\)"):
        checkpoint.restore_meta(tmp_path, 3)


def test_keeps_the_best_by_val_ppl_too(tmp_path: Path) -> None:
    """The lowest val_ppl survives three newer checkpoints (orbax must record each step's metrics for BestN)."""
    save_epochs(tmp_path, [9.0, 1.5, 8.0, 7.0, 6.0, 5.0])
    assert checkpoint.steps(tmp_path) == [2, 4, 5, 6]
    assert checkpoint.resolve(tmp_path, "best") == 2 and checkpoint.resolve(tmp_path, None) == 6


def test_background_saves_complete_and_a_failed_one_names_its_epoch(monkeypatch, tmp_path: Path) -> None:
    """Saves overlap the next chunk; each is complete before the next starts. A write that fails in
    orbax's background thread surfaces at the next save (or when the run ends) as a CheckpointError
    naming its epoch, with the earlier checkpoints restorable."""
    real = checkpoint.manager

    def failing_from_epoch_3(*args, **kwargs):
        mgr = real(*args, **kwargs)
        wait = mgr.wait_until_finished

        def wait_until_finished() -> None:
            wait()
            if 3 in mgr.all_steps():  # stand for a write that failed late: the disk filled up
                raise OSError(28, "No space left on device")

        mgr.wait_until_finished = wait_until_finished
        return mgr

    monkeypatch.setattr(checkpoint, "manager", failing_from_epoch_3)
    with pytest.raises(CheckpointError, match=r"cannot save checkpoint 3 .*No space left"):
        with checkpoint.Saver(tmp_path) as saver:
            for epoch in (1, 2, 3):
                saver.save(epoch, {"w": jnp.full(3, float(epoch))}, meta_at(epoch, 10.0 - epoch))
            assert saver.pending == 3  # still being written when save returned
    monkeypatch.undo()
    target = {"w": jax.ShapeDtypeStruct((3,), jnp.float32)}
    assert checkpoint.restore_state(tmp_path, 2, target)["w"].tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(CheckpointError, match=r"checkpoint 4 .*\(Read-only\); put .* on a writable filesystem"):
        with checkpoint.Saver(tmp_path) as saver:
            monkeypatch.setattr(checkpoint, "_write", lambda *a: (_ for _ in ()).throw(OSError(30, "Read-only")))
            saver.save(4, {"w": jnp.zeros(3)}, meta_at(4, 1.0))
