"""The only module that knows orbax: save and restore a training state with the metadata to rebuild it.

A checkpoint is `RUN_DIR/checkpoints/<epoch>/` with two items: `state` (a `TrainState`: params, optimizer
state, step; plain arrays) and `meta` (JSON: `Meta`, the schema, with a sha256 digest of the state's
arrays), plus orbax's record of its metrics. Restoring reads `meta` first, builds the model it names, restores
`state` against that model's abstract shapes on this machine's devices and checks the digest. Any file
that cannot be read, or arrays that differ from those saved, make the checkpoint `Damaged`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrnn import faults, strict_json
from jaxrnn.config import Config
from jaxrnn.data import Vocab
from jaxrnn.errors import CheckpointError, Damaged, write_failure

FORMAT = 1
CHECKPOINTS = "checkpoints"


@dataclass(frozen=True)
class Meta:
    """What a checkpoint holds beside its arrays, so that it restores and samples with no other input:
    the run's config, its vocab and default prompt, where the run was and its metrics there. Saved as
    JSON with `format` and the arrays' `digest`; a field a checkpoint lacks reads as its default."""

    config: dict[str, Any]
    vocab: tuple[str, ...]
    prompt: str | None = None  # the corpus' default prompt
    epoch: int | float | None = None  # the run's epoch (fractional in a run by steps)
    step: int | None = None  # the optimizer step of a run by steps
    train_ppl: float | None = None
    val_ppl: float | None = None
    digest: str | None = None  # of the state's arrays, set by the save (checkpoints before it had none)

    @classmethod
    def of(cls, cfg: Config, vocab: Vocab, prompt: str, record: dict[str, Any]) -> Meta:
        """The meta of a checkpoint saved at a metrics record."""
        return cls(cfg.to_dict(), tuple(vocab.idx_to_token), prompt, record.get("epoch"), record.get("step"),
                   record["train_ppl"], record["val_ppl"])

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Meta:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if k == "vocab" else v for k, v in d.items() if k in known})


MAX_META_BYTES = 1 << 20  # a jaxrnn meta item is a few KB; anything near this is not ours


def _quiet() -> None:
    """orbax logs through absl (INFO chatter, and an ERROR before raising on a damaged file); the
    errors that matter reach the user as one CheckpointError line instead."""
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    # a failed restore leaves orbax's asyncio futures unretrieved; asyncio logs each with a traceback
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.FATAL)
    except ImportError:  # absl comes with orbax; nothing to quiet without it
        pass


def manager(run_dir: Path, create: bool = False, keep: int = 3, background: bool = False):
    """A CheckpointManager keeping the latest `keep` checkpoints and the best by validation perplexity.
    Writes are atomic: orbax writes a temporary directory and renames it when complete. With
    `background`, `save` returns once the arrays are copied to host memory and the files are written
    by a thread of orbax's. Only a writing manager (`create`) reads every checkpoint's metrics when it
    starts (for its best-of policy); a reading one reads only the checkpoint it restores."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    _quiet()
    _mute_stray_tracebacks()
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: -m["val_ppl"], n=1, keep_checkpoints_without_metrics=False),
    ])
    # best_fn is set only so that orbax records each step's metrics, which BestN reads; the policy decides.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m["val_ppl"],
                                           best_mode="min", create=create, cleanup_tmp_directories=create,
                                           enable_async_checkpointing=background, lightweight_initialize=not create,
                                           temporary_path_class=faults.temporary_path_class())
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options, item_handlers=handlers)


def _write(mgr, epoch: int, args, metrics: dict[str, float]) -> None:
    """The one place a save starts (tests raise OSError here to stand for a full disk)."""
    mgr.save(epoch, args=args, metrics=metrics, force=True)


def _one_copy(state: Any) -> Any:
    """In a single process, each replicated array as its copy on one device. Given the replicated array,
    orbax splits the write across the replicas, which in one process only costs a compiled slice per
    array and device (0.45 s of a seed run's first save on a 2-device CPU); restoring does not depend on
    the saved layout. Across processes each array stays global, so that one replica writes it."""
    if jax.process_count() > 1:
        return state
    return jax.tree.map(lambda a: a.addressable_shards[0].data if isinstance(a, jax.Array) and a.is_fully_replicated
                        else a, state)


class Saver:
    """One run's checkpoints through one CheckpointManager. Each save is written in the background
    while the next chunk of epochs trains, and completes before the next save starts and when the
    `with` block ends (normally or not), so a stopped run leaves its last checkpoint complete. A
    failed save raises CheckpointError naming its epoch; earlier checkpoints stay intact."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.pending: int | None = None  # the epoch being written in the background
        self.mgr = self._guard(0, lambda: manager(run_dir, create=True, background=True))

    def save(self, epoch: int, state: Any, meta: Meta) -> None:
        """Start writing the checkpoint of `epoch` (a `TrainState`, or any pytree), after the previous one
        is complete; orbax records `meta.val_ppl` to rank it."""
        import orbax.checkpoint as ocp

        self.wait()
        faults.reach("save", epoch)
        state = _one_copy(state._asdict() if hasattr(state, "_asdict") else state)
        meta = strict_json.finite({**asdict(meta), "digest": digest(state), "format": FORMAT})  # orbax writes NaN
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        metrics = {"val_ppl": float(meta["val_ppl"]) if meta["val_ppl"] is not None else 1e30}  # ranked last
        self._guard(epoch, lambda: _write(self.mgr, epoch, args, metrics))
        self.pending = epoch

    def wait(self) -> None:
        """Block until the save in progress, if any, is complete."""
        if self.pending is not None:
            epoch, self.pending = self.pending, None
            self._guard(epoch, self.mgr.wait_until_finished)

    def _guard(self, epoch: int, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as e:  # a full disk or unwritable directory: OSError or orbax's wrapping of it
            why, advice = write_failure(e, self.run_dir)
            raise CheckpointError(f"cannot save checkpoint {epoch} in {self.run_dir} ({why}); {advice}, then "
                                  f"resume with 'jaxrnn train --resume {self.run_dir}' (earlier checkpoints are "
                                  "intact)") from None

    def __enter__(self) -> Saver:
        return self

    def __exit__(self, *exc: Any) -> None:
        epoch = self.pending or 0
        try:
            self.wait()
        except CheckpointError:
            with contextlib.suppress(Exception):  # orbax may raise the same failure again on close
                self.mgr.close()
            raise
        self._guard(epoch, self.mgr.close)


def save(run_dir: Path, epoch: int, state: Any, meta: Meta) -> None:
    """Write the checkpoint of `epoch`, complete or not at all; earlier checkpoints stay intact."""
    with Saver(run_dir) as saver:
        saver.save(epoch, state, meta)


def steps(run_dir: Path) -> list[int]:
    """The epochs that have a complete checkpoint, oldest first: orbax renames a checkpoint's temporary
    directory to its number once complete. Listed from the directory names alone, so that a damaged
    file in one checkpoint cannot hide the others."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and p.is_dir())


def saved_val_ppl(run_dir: Path, epoch: int) -> float:
    """The validation perplexity orbax recorded beside a checkpoint (what its best-of policy ranks by).
    A writing manager reads this file of every checkpoint when it starts, so a damaged one makes the
    whole checkpoint `Damaged`."""
    path = Path(run_dir) / CHECKPOINTS / str(epoch) / "metrics" / "metrics"
    try:
        return float(json.loads(path.read_text())["val_ppl"])
    except Exception as e:  # missing, a directory, not UTF-8, not JSON, not a dict with val_ppl
        raise Damaged(epoch, run_dir, f"metrics: {type(e).__name__}") from None


def best_step(run_dir: Path) -> int | None:
    """The epoch of the checkpoint with the lowest validation perplexity (the latest of equals, as orbax
    keeps it), passing over checkpoints whose recorded metrics are damaged."""
    ppl = {}
    for epoch in steps(run_dir):
        with contextlib.suppress(Damaged):
            ppl[epoch] = saved_val_ppl(run_dir, epoch)
    return min(ppl, key=lambda e: (ppl[e], -e), default=None)


def resolve(run_dir: Path, step: int | str | None) -> int:
    """The checkpoint epoch that `--step` names: None is the latest, 'best' the best, else an epoch."""
    available = steps(run_dir)
    if not available:
        raise CheckpointError(f"no checkpoint in {run_dir}; pass --run with a run directory written by jaxrnn train")
    if step is None:
        return available[-1]
    if step == "best":
        best = best_step(run_dir)
        return best if best is not None else available[-1]
    if step not in available:
        raise CheckpointError(f"no checkpoint {step} in {run_dir} (checkpoints are numbered by epoch, or by step in a "
                              f"run by --steps); pass --step best or one of {available}")
    return int(step)


def set_aside(run_dir: Path, epoch: int) -> Path:
    """Move a damaged checkpoint out of the manager's sight (into RUN_DIR/damaged/), so that its epoch
    can be saved again; nothing is deleted."""
    dest = Path(run_dir) / "damaged" / str(epoch)
    n = 1
    while dest.exists():
        dest, n = Path(run_dir) / "damaged" / f"{epoch}.{n}", n + 1
    dest.parent.mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / CHECKPOINTS / str(epoch)).rename(dest)
    return dest


def _check_safe(step_dir: Path) -> None:
    """Refuse links (they could point anywhere) and meta files far larger than jaxrnn writes."""
    root = step_dir.resolve()
    for p in [step_dir, *step_dir.rglob("*")]:
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            raise CheckpointError(f"{p} is a link out of the checkpoint; refusing it. Restore from a copy "
                                  "written by jaxrnn")
    meta = step_dir / "meta"
    size = sum(f.stat().st_size for f in meta.rglob("*") if f.is_file()) if meta.is_dir() else 0
    if size > MAX_META_BYTES:
        raise CheckpointError(f"{meta} holds {size} bytes, far more than jaxrnn writes; refusing it")


def restore_meta(run_dir: Path, epoch: int) -> Meta:
    """The metadata of the checkpoint of `epoch`, after checking that orbax's record of its metrics
    reads (a later save lists them all)."""
    import orbax.checkpoint as ocp

    _check_safe(Path(run_dir) / CHECKPOINTS / str(epoch))
    saved_val_ppl(run_dir, epoch)
    mgr = manager(run_dir)
    try:
        meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for a damaged file (JSONDecodeError, ValueError, ...)
        raise Damaged(epoch, run_dir, f"meta: {type(e).__name__}") from None
    finally:
        mgr.close()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} is not a jaxrnn checkpoint of format {FORMAT}; "
                              "retrain, or use the jaxrnn version that wrote it")
    try:
        return Meta.from_json(meta)
    except TypeError:  # a required field missing
        raise Damaged(epoch, run_dir, "meta: fields missing") from None


def restore_state(run_dir: Path, epoch: int, abstract_state: Any, expect: str | None = None) -> Any:
    """The saved state of `epoch`, laid out like `abstract_state` (a `jax.eval_shape` tree; a
    `TrainState` gives a `TrainState`) on this process' first device, after checking that the saved
    shapes are the expected ones, and after it the arrays' digest against `expect` (the meta's)."""
    import orbax.checkpoint as ocp

    if hasattr(abstract_state, "_asdict"):  # a NamedTuple is saved as its dict
        return type(abstract_state)(**restore_state(run_dir, epoch, abstract_state._asdict(), expect))

    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state)
    mgr = manager(run_dir)
    try:
        saved = mgr.item_metadata(epoch)["state"]
        _check_same_tree(saved, target, run_dir, epoch)
        state = mgr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    except CheckpointError:
        raise
    except Exception as e:  # a truncated, missing or overwritten array file
        raise Damaged(epoch, run_dir, f"state: {type(e).__name__}") from None
    finally:
        mgr.close()
    if expect is not None and digest(state) != expect:
        raise Damaged(epoch, run_dir, "state: its arrays differ from those saved")
    return state


def digest(state: Any) -> str:
    """sha256 of every array of a state (path, dtype, shape and bytes, in tree order): a checkpoint's
    arrays are checked against it on restore, so that damage orbax reads without error is caught too.
    Arrays replicated over processes are hashed from this process' copy."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            leaf = leaf.addressable_shards[0].data
        a = np.asarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _from_orbax(unraisable: Any) -> bool:
    """Whether an unraisable exception comes out of orbax's or tensorstore's reads: a coroutine of theirs
    finalized with its error unretrieved, or a callback into their closed event loop."""
    exc, obj = unraisable.exc_value, unraisable.object
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return True
    code = getattr(obj, "cr_code", None)
    files = [code.co_filename] if code is not None else []
    tb = unraisable.exc_traceback
    while tb is not None:
        files.append(tb.tb_frame.f_code.co_filename)
        tb = tb.tb_next
    return any(f"{os.sep}{pkg}{os.sep}" in f for f in files for pkg in ("orbax", "tensorstore"))


def _drop_orbax_noise(unraisable: Any, _default=sys.unraisablehook) -> None:
    """sys.unraisablehook that drops what `_from_orbax` recognises and passes all else on."""
    if not _from_orbax(unraisable):
        _default(unraisable)


def _mute_stray_tracebacks() -> None:
    """When a restore fails on a damaged array file, orbax's other reads are still in flight: tensorstore's
    threads complete them into orbax's closed asyncio loop ('RuntimeError: Event loop is closed' in a
    native callback), and their coroutines are finalized later with errors nobody retrieved ('Exception
    ignored in: <coroutine object _read_array_index_and_device_put>', a TensorStore spec dump). Python
    reports both as unraisable exceptions at any moment from then on, interpreter exit included.
    Installed before any checkpoint work, this hook drops exactly those, so the user sees jaxrnn's line."""
    sys.unraisablehook = _drop_orbax_noise


def _check_same_tree(saved: Any, target: Any, run_dir: Path, epoch: int) -> None:
    def name(k: Any) -> str:  # orbax saves a namedtuple's fields as dict keys: compare names only
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {"/".join(map(name, p)): tuple(getattr(x, "shape", ())) for p, x in leaves}

    if saved is None:
        raise Damaged(epoch, run_dir, "state: its array metadata is missing")
    got, want = shapes(saved), shapes(target)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} holds another model (differs at {diff}); "
                              "sample it with the config it was trained with")
