"""The files of a run directory beside its checkpoints: `config.json` (every setting, with the corpus'
sha1, the library versions and the evaluation protocol), `metrics.jsonl` (one JSON record per epoch, or
per evaluation of a run by steps), and what `jaxrnn runs` lists from them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from jaxrnn import checkpoint, strict_json
from jaxrnn.artifacts import CURVES, SAMPLES, TENSORBOARD
from jaxrnn.batching import eval_protocol
from jaxrnn.config import Config
from jaxrnn.errors import CheckpointError, JaxrnnError, write_failure
from jaxrnn.progress import unit_of

CONFIG = "config.json"
METRICS = "metrics.jsonl"
GROUP = "group.json"  # in a group's directory: its seeds, each replica a run directory `seed-K/` beside it


def write_text(path: Path, text: str) -> None:
    """Replace a file atomically: a reader sees the old or the new text, never half of it."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


LOCK = ".lock"  # held (flock) by the one process writing the run directory, removed when it lets go


@contextlib.contextmanager
def writing(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process alone while it writes there: a second writer (another `train
    --resume`, say) is refused in one line naming the process that holds it. The lock is the kernel's
    (flock) on `RUN_DIR/.lock`, released when the holder ends, so a kill -9 cannot leave it stale (only
    the file, which the next holder takes over). Makes the directory if needed."""
    try:
        import fcntl
    except ImportError:  # not POSIX (Windows): no lock
        yield
        return
    run_dir, path = Path(run_dir), Path(run_dir) / LOCK
    while True:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _unwritable(run_dir, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise JaxrnnError(f"{run_dir} is being written by {holder}; wait for it to end (or stop it), then try "
                              "again: one process at a time writes a run directory") from None
        except OSError as e:  # a filesystem without locks (NFS without lockd, some FUSE mounts)
            os.close(fd)
            print(f"jaxrnn: warning: {run_dir} cannot be locked ({e.strerror}); make sure no other process writes "
                  "it", file=sys.stderr, flush=True)
            yield
            return
        try:  # the holder before may have removed the file after this process opened it: then take the new one
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        command = " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]])[:200]
        with contextlib.suppress(OSError):  # who holds it, for the refusal's message; on a full disk, unsaid
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} ({command})\n".encode(), 0)
        yield
    finally:
        path.unlink(missing_ok=True)  # while still held, so that no one locks the file as it goes
        os.close(fd)  # releases the lock


def read_metrics(run_dir: Path, upto: int | None = None) -> list[dict[str, Any]]:
    """The records of metrics.jsonl (up to `upto` epochs, or steps for a run by steps), each once; a
    half-written last line, or a record after `upto`, is left out."""
    path = Path(run_dir) / METRICS
    records: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(r, dict):
            continue
        at = r.get(unit_of(r))
        if isinstance(at, int) and (upto is None or at <= upto):
            records[at] = r
    return [records[e] for e in sorted(records)]


def append_metrics(run_dir: Path, records: list[dict[str, Any]]) -> None:
    """Add records to metrics.jsonl, one JSON object a line, all of them or none: a write that fails
    midway (a full disk) is cut back to where the file ended, so no record is ever half there."""
    path, data = run_dir / METRICS, "".join(strict_json.dumps(r) + "\n" for r in records).encode()
    try:
        with open(path, "ab", buffering=0) as f:
            end = f.seek(0, os.SEEK_END)
            try:
                view = memoryview(data)
                while view:  # an unbuffered write may write part of it and raise on the next
                    view = view[f.write(view):]
            except OSError:
                f.truncate(end)
                raise
    except OSError as e:
        raise _write_error(path, e, run_dir) from None


def rewrite_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """Replace metrics.jsonl with `history`, atomically."""
    try:
        write_text(run_dir / METRICS, "".join(strict_json.dumps(r) + "\n" for r in history))
    except OSError as e:
        raise _write_error(run_dir / METRICS, e, run_dir) from None


def _unwritable(run_dir: Path, e: OSError) -> JaxrnnError:
    """A run directory that cannot be made or written, as the user's error: its cause and what to do."""
    why, advice = write_failure(e, run_dir)
    return JaxrnnError(f"cannot write run directory {run_dir} ({why}); {advice}, or train into another directory")


def _write_error(path: Path, e: OSError, run_dir: Path) -> JaxrnnError:
    """A failed write of a run's file as the user's error: its cause and what to do, then resume."""
    why, advice = write_failure(e, run_dir)
    return JaxrnnError(f"cannot write {path} ({why}); {advice}, then 'jaxrnn train --resume {run_dir}'")


def versions() -> dict[str, str]:
    """The versions of Python and the libraries a run depends on, for config.json."""
    names = ("jaxrnn", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return {"python": platform.python_version(), **found}


def saved_sha1(run_dir: Path | None) -> str | None:
    """The corpus sha1 a run directory's config.json records (None: no run directory, or none recorded)."""
    try:
        return json.loads((run_dir / CONFIG).read_text()).get("data_sha1") if run_dir is not None else None
    except (OSError, json.JSONDecodeError):
        return None


def prepare(run_dir: Path, cfg: Config, force: bool, data_sha1: str | None) -> None:
    """Make `run_dir` a new run's: refuse one that holds a run unless `force` (then clear it; a run that never
    saved a checkpoint or a record is cleared without it: a failed start, out of memory say), write
    config.json (with the corpus' sha1, the library versions and the evaluation protocol) and an
    empty metrics.jsonl."""
    if not force and _never_trained(run_dir):
        print(f"jaxrnn: note: {run_dir} holds a run that never saved a checkpoint; starting it anew",
              file=sys.stderr, flush=True)
        force = True
    if (run_dir / CONFIG).exists() or (run_dir / checkpoint.CHECKPOINTS).exists() or (run_dir / GROUP).exists():
        if not force:
            raise JaxrnnError(f"{run_dir} already holds a run; pass --resume {run_dir} to continue it, --force to "
                              "overwrite it, or --out NEW_DIR")
        _clear(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        cfg.save(run_dir / CONFIG, data_sha1=data_sha1, versions=versions(),
                 eval_protocol=eval_protocol(cfg.eval, cfg.split))
        (run_dir / METRICS).write_text("")
    except OSError as e:
        raise _unwritable(run_dir, e) from None


def _clear(run_dir: Path) -> None:
    """Remove what a run or a group wrote in `run_dir` (for --force), config.json aside (rewritten)."""
    for name in (checkpoint.CHECKPOINTS, "damaged", TENSORBOARD):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for name in (METRICS, CURVES, SAMPLES, GROUP):
        (run_dir / name).unlink(missing_ok=True)


def _never_trained(run_dir: Path) -> bool:
    """Whether `run_dir` holds a jaxrnn run that never saved anything (a start that failed, out of memory
    say): its config.json written by `prepare`, and no checkpoint, set-aside checkpoint or record."""
    try:
        saved = json.loads((run_dir / CONFIG).read_text())
    except (OSError, ValueError):
        return False
    ours = isinstance(saved, dict) and "versions" in saved and "data_sha1" in saved
    untouched = not (run_dir / "damaged").exists() and not read_metrics(run_dir)
    return ours and untouched and not any((run_dir / checkpoint.CHECKPOINTS).glob("*"))


def replica_dir(group_dir: Path, seed: int) -> Path:
    """Where the replica with this seed of a group lives: a complete run directory."""
    return group_dir / f"seed-{seed}"


def write_group(group_dir: Path, seeds: tuple[int, ...], force: bool) -> None:
    """Make `group_dir` a new group's: refuse one that holds a run or another group unless `force`, write
    group.json (its seeds and replica directories) atomically."""
    if not force and ((group_dir / GROUP).exists() or (group_dir / CONFIG).exists()):
        raise JaxrnnError(f"{group_dir} already holds a run; pass --resume {group_dir} to continue it, --force to "
                          "overwrite it, or --out NEW_DIR")
    try:
        group_dir.mkdir(parents=True, exist_ok=True)
        replicas = [replica_dir(group_dir, s).name for s in seeds]
        if force:  # what another run or group left here: no stale run or replica is read as this group's
            _clear(group_dir)
            (group_dir / CONFIG).unlink(missing_ok=True)
            for d in group_dir.glob("seed-*"):
                if d.is_dir() and d.name not in replicas:
                    shutil.rmtree(d)
        write_text(group_dir / GROUP, strict_json.dumps({"seeds": list(seeds), "replicas": replicas}, indent=2) + "\n")
    except OSError as e:
        raise _unwritable(group_dir, e) from None


def read_group(group_dir: Path) -> tuple[int, ...] | None:
    """A group's seeds from its group.json, or None where `group_dir` is not a group's."""
    if not (group_dir / GROUP).is_file():
        return None
    try:
        saved = json.loads((group_dir / GROUP).read_text())
    except (OSError, ValueError) as e:
        raise JaxrnnError(f"cannot read {group_dir / GROUP} ({e}); restore it, or resume each seed-K/ alone") from None
    seeds = saved.get("seeds") if isinstance(saved, dict) else None
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise JaxrnnError(f"{group_dir / GROUP} names no seeds; restore it, or resume each seed-K/ alone")
    return tuple(seeds)


def group_histories(group_dir: Path) -> list[list[dict[str, Any]]]:
    """Each replica's records of a group, in the order of its seeds."""
    return [read_metrics(replica_dir(group_dir, s)) for s in read_group(group_dir) or ()]


def find_runs(root: str | Path) -> list[Path]:
    """The run directories under `root` (those holding a config.json), `root` itself included, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise JaxrnnError(f"{root} is not a directory; pass a directory that holds run directories")
    found = {p.parent for p in root.rglob(CONFIG)
             if p.is_file() and not {checkpoint.CHECKPOINTS, "damaged"} & set(p.relative_to(root).parts[:-1])}
    return sorted(found)


def summary(run_dir: Path) -> dict[str, Any]:
    """A run's name, best validation perplexity (and its epoch, or step for a run by steps), the best
    checkpoint's (what `--step best` loads; None when no checkpoint can be listed), how far it went and
    how far it goes, from its files alone."""
    cfg = Config.load(run_dir / CONFIG)
    history = read_metrics(run_dir)
    best = min((r for r in history if r.get("val_ppl") is not None), key=lambda r: r["val_ppl"], default=None)
    try:
        saved = checkpoint.resolve(run_dir, "best")
    except CheckpointError:
        saved = None
    u = cfg.unit
    return {"name": cfg.name, "epochs": cfg.length, "done": history[-1][u] if history else 0,
            "best_val_ppl": best["val_ppl"] if best else None, "best_epoch": best[u] if best else None,
            "best_saved": saved, "unit": u}
