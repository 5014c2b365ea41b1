"""The only module that knows orbax: save and restore a training state with the metadata to rebuild it.

A checkpoint is `RUN_DIR/checkpoints/<epoch>/` with two items: `state` (params, optimizer state, step;
plain arrays) and `meta` (JSON: config, vocab, epoch, metrics). Restoring reads `meta` first, builds the
model it names, and restores `state` against that model's abstract shapes on this machine's devices.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrnn.errors import CheckpointError

FORMAT = 1
CHECKPOINTS = "checkpoints"


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
    by a thread of orbax's."""
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
                                           enable_async_checkpointing=background)
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

    def save(self, epoch: int, state: Any, meta: dict[str, Any], val_ppl: float) -> None:
        """Start writing the checkpoint of `epoch`, after the previous one is complete."""
        import orbax.checkpoint as ocp

        self.wait()
        args = ocp.args.Composite(state=ocp.args.StandardSave(_one_copy(state)),
                                  meta=ocp.args.JsonSave({**meta, "format": FORMAT}))
        metrics = {"val_ppl": float(val_ppl) if np.isfinite(val_ppl) else 1e30}
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
            raise CheckpointError(f"cannot save the checkpoint of epoch {epoch} in {self.run_dir} "
                                  f"({type(e).__name__}: {e}); free disk space or make the directory writable, "
                                  f"then resume with 'jaxrnn train --resume {self.run_dir}' (earlier checkpoints "
                                  "are intact)") from None

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


def save(run_dir: Path, epoch: int, state: Any, meta: dict[str, Any], val_ppl: float) -> None:
    """Write the checkpoint of `epoch`, complete or not at all; earlier checkpoints stay intact."""
    with Saver(run_dir) as saver:
        saver.save(epoch, state, meta, val_ppl)


def steps(run_dir: Path) -> list[int]:
    """The epochs that have a complete checkpoint, oldest first."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return []
    mgr = manager(run_dir)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def best_step(run_dir: Path) -> int | None:
    """The epoch of the checkpoint with the lowest validation perplexity."""
    mgr = manager(run_dir)
    try:
        return mgr.best_step()
    finally:
        mgr.close()


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
        raise CheckpointError(f"no checkpoint of epoch {step} in {run_dir}; pass --step best or one of {available}")
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


def restore_meta(run_dir: Path, epoch: int) -> dict[str, Any]:
    """The JSON metadata of the checkpoint of `epoch`."""
    import orbax.checkpoint as ocp

    _check_safe(Path(run_dir) / CHECKPOINTS / str(epoch))
    mgr = manager(run_dir)
    try:
        meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for a damaged file (JSONDecodeError, ValueError, ...)
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} is unreadable ({type(e).__name__}); "
                              "pass --step with an earlier epoch, or delete it") from None
    finally:
        mgr.close()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} is not a jaxrnn checkpoint of format {FORMAT}; "
                              "retrain, or use the jaxrnn version that wrote it")
    return meta


def restore_state(run_dir: Path, epoch: int, abstract_state: Any) -> Any:
    """The saved state of `epoch`, laid out like `abstract_state` (a `jax.eval_shape` tree) on this
    process' first device, after checking that the saved shapes are the expected ones."""
    import orbax.checkpoint as ocp

    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state)
    mgr = manager(run_dir)
    try:
        saved = mgr.item_metadata(epoch)["state"]
        _check_same_tree(saved, target, run_dir, epoch)
        return mgr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or corrupted array file
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} cannot be restored ({type(e).__name__}); "
                              "pass --step with an earlier epoch, or delete it") from None
    finally:
        mgr.close()


def _drop_closed_loop_errors(unraisable: Any, _default=sys.unraisablehook) -> None:
    """sys.unraisablehook that drops orbax's 'Event loop is closed' errors and passes all else on."""
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
        return
    _default(unraisable)


def _mute_stray_tracebacks() -> None:
    """When a restore fails on a damaged array file, tensorstore's threads still complete reads into
    orbax's closed asyncio loop; each raises 'RuntimeError: Event loop is closed' in a native callback,
    which Python reports as an unraisable exception at any moment from then on. Installed before any
    checkpoint work, this hook drops exactly those, so the user sees jaxrnn's one line."""
    sys.unraisablehook = _drop_closed_loop_errors


def _check_same_tree(saved: Any, target: Any, run_dir: Path, epoch: int) -> None:
    def name(k: Any) -> str:  # orbax saves a namedtuple's fields as dict keys: compare names only
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                return str(getattr(k, attr))
        return str(k)

    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {"/".join(map(name, p)): tuple(getattr(x, "shape", ())) for p, x in leaves}

    got, want = shapes(saved), shapes(target)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} holds another model (differs at {diff}); "
                              "sample it with the config it was trained with")
