"""The only module that knows orbax: save and restore a training state with the metadata to rebuild it.

A checkpoint is `RUN_DIR/checkpoints/<epoch>/` with two items: `state` (params, optimizer state, step;
plain arrays) and `meta` (JSON: config, vocab, epoch, metrics). Restoring reads `meta` first, builds the
model it names, and restores `state` against that model's abstract shapes on this machine's devices.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxrnn.errors import CheckpointError

FORMAT = 1
CHECKPOINTS = "checkpoints"


def _quiet() -> None:
    """orbax logs through absl at INFO; keep stderr for what the user needs."""
    logging.getLogger("absl").setLevel(logging.WARNING)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:  # absl comes with orbax; nothing to quiet without it
        pass


def manager(run_dir: Path, read_only: bool = False, keep: int = 3):
    """A CheckpointManager keeping the latest `keep` checkpoints and the best by validation perplexity."""
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as cm

    _quiet()
    policy = cm.AnyPreservationPolicy([
        cm.LatestN(n=keep),
        cm.BestN(get_metric_fn=lambda m: -m["val_ppl"], n=1, keep_checkpoints_without_metrics=False),
    ])
    # best_fn is set only so that orbax records each step's metrics, which BestN reads; the policy decides.
    options = ocp.CheckpointManagerOptions(preservation_policy=policy, best_fn=lambda m: m["val_ppl"],
                                           best_mode="min", create=not read_only, enable_async_checkpointing=False)
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}
    return ocp.CheckpointManager(Path(run_dir).absolute() / CHECKPOINTS, options=options, item_handlers=handlers)


def save(run_dir: Path, epoch: int, state: Any, meta: dict[str, Any], val_ppl: float) -> None:
    """Write the checkpoint of `epoch` (complete, or not at all) and wait until it is on disk."""
    import orbax.checkpoint as ocp

    mgr = manager(run_dir)
    try:
        mgr.save(epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                meta=ocp.args.JsonSave({**meta, "format": FORMAT})),
                 metrics={"val_ppl": float(val_ppl) if np.isfinite(val_ppl) else 1e30}, force=True)
        mgr.wait_until_finished()
    finally:
        mgr.close()


def steps(run_dir: Path) -> list[int]:
    """The epochs that have a complete checkpoint, oldest first."""
    if not (Path(run_dir) / CHECKPOINTS).is_dir():
        return []
    mgr = manager(run_dir, read_only=True)
    try:
        return sorted(mgr.all_steps())
    finally:
        mgr.close()


def restore_meta(run_dir: Path, epoch: int | None = None) -> tuple[int, dict[str, Any]]:
    """(epoch, meta) of the latest checkpoint, or of `epoch`."""
    import orbax.checkpoint as ocp

    available = steps(run_dir)
    if not available:
        raise CheckpointError(f"no checkpoint in {run_dir}; pass --run with a run directory written by jaxrnn train")
    if epoch is None:
        epoch = available[-1]
    elif epoch not in available:
        raise CheckpointError(f"no checkpoint of epoch {epoch} in {run_dir}; available: {available}")
    mgr = manager(run_dir, read_only=True)
    try:
        meta = mgr.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # orbax raises many types for a damaged file
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} is unreadable ({type(e).__name__}); "
                              "delete it to fall back to an earlier one") from None
    finally:
        mgr.close()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} is not a jaxrnn checkpoint of format {FORMAT}; "
                              "retrain, or use the jaxrnn version that wrote it")
    return epoch, meta


def restore_state(run_dir: Path, epoch: int, abstract_state: Any) -> Any:
    """The saved state of `epoch`, laid out like `abstract_state` (a `jax.eval_shape` tree) on this
    machine's devices, after checking that the saved shapes are the expected ones."""
    import orbax.checkpoint as ocp

    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state)
    mgr = manager(run_dir, read_only=True)
    try:
        saved = mgr.item_metadata(epoch)["state"]
        _check_same_tree(saved, target, run_dir, epoch)
        return mgr.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))["state"]
    except CheckpointError:
        raise
    except Exception as e:  # a truncated or corrupted array file
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} cannot be restored ({type(e).__name__}: {e}); "
                              "delete it to fall back to an earlier one") from None
    finally:
        mgr.close()


def _check_same_tree(saved: Any, target: Any, run_dir: Path, epoch: int) -> None:
    def shapes(tree):
        leaves = jax.tree_util.tree_leaves_with_path(tree)
        return {jax.tree_util.keystr(p): tuple(getattr(x, "shape", ())) for p, x in leaves}

    got, want = shapes(saved), shapes(target)
    if got != want:
        diff = sorted(set(got.items()) ^ set(want.items()))[:3]
        raise CheckpointError(f"checkpoint {epoch} in {run_dir} holds another model (differs at {diff}); "
                              "sample it with the config it was trained with")
