"""Any damage to any file of a checkpoint: the commands either read it whole or refuse it in one line.

A tiny run saves checkpoints at epochs 1 and 2. Each case damages one file of checkpoint 2 in a copy of it,
one way (truncated, emptied, deleted, random bytes, replaced by a directory), then runs in this process:
`sample` and `eval` (exit 0 with the intact run's output, or exit 2 with one line naming checkpoint 2 and
`--step 1`), `runs` (lists the run), and `train --resume` (ends bit for bit as the run left alone, the
damaged checkpoint moved to RUN/damaged/ when it cannot be read). Nothing from orbax, TensorStore or
asyncio may reach either stream, at the Python level or the file-descriptor level.
"""

from __future__ import annotations

import gc
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import state_leaves

from jaxrnn import checkpoint

FLAGS = ["--hidden", "8", "--num-train", "512", "--num-val", "128", "--batch-size", "128", "--num-steps", "8",
         "--unroll", "1", "--no-curves", "--epochs", "2", "--save-every", "1"]
SAMPLE = ["--num-preds", "20"]
# every file orbax writes into a checkpoint, as globs relative to it; a new one fails `test_the_grid_covers...`
FILES = ["_CHECKPOINT_METADATA", "commit_success.txt", "meta/commit_success.txt", "meta/metadata",
         "metrics/commit_success.txt", "metrics/metrics", "state/_METADATA", "state/_sharding",
         "state/array_metadatas/process_0", "state/commit_success.txt", "state/manifest.ocdbt", "state/d/*",
         "state/ocdbt.process_0/manifest.ocdbt", "state/ocdbt.process_0/d/*"]
NOISE = re.compile(r"Traceback|Exception ignored|orbax|tensorstore|asyncio|absl", re.I)


def _random(p: Path) -> None:
    p.write_bytes(np.random.default_rng(len(p.name)).integers(0, 256, max(p.stat().st_size, 16), np.uint8).tobytes())


def _directory(p: Path) -> None:
    p.unlink()
    p.mkdir()


DAMAGE: dict[str, Callable[[Path], None]] = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "emptied": lambda p: p.write_bytes(b""),
    "deleted": lambda p: p.unlink(),
    "random-bytes": _random,
    "a-directory": _directory,
}


@dataclass(frozen=True)
class Intact:
    """The run left alone and what each command printed for it."""

    dir: Path
    line: str  # train's result line
    sample: str
    eval: str
    leaves: dict[str, np.ndarray]


def files_of(step_dir: Path) -> list[str]:
    return sorted(p.relative_to(step_dir).as_posix() for p in step_dir.rglob("*") if p.is_file())


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {p.relative_to(root).as_posix(): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def intact(tmp_path_factory, call) -> Intact:
    work = tmp_path_factory.mktemp("damage")
    trained = call(["train", *FLAGS, "--out", work / "run"], work)
    assert trained.returncode == 0, trained.stderr
    assert checkpoint.steps(work / "run") == [1, 2]
    sample = call(["sample", "--run", work / "run", *SAMPLE], work)
    evaluated = call(["eval", "--run", work / "run"], work)
    assert sample.returncode == evaluated.returncode == 0, sample.stderr + evaluated.stderr
    return Intact(work / "run", trained.stdout, sample.stdout, evaluated.stdout, state_leaves(work / "run"))


def test_the_grid_covers_every_file_of_a_checkpoint(intact) -> None:
    """FILES names each file orbax wrote, and each glob matches at least one."""
    step_dir = intact.dir / checkpoint.CHECKPOINTS / "2"
    found = files_of(step_dir)
    unnamed = [f for f in found if not any(Path(f).match(g) and f.count("/") == g.count("/") for g in FILES)]
    assert not unnamed, f"files the grid does not damage: {unnamed}"
    assert all(list(step_dir.glob(g)) for g in FILES), [g for g in FILES if not list(step_dir.glob(g))]


def nothing_else_written(capfd, name: str) -> None:
    """Nothing reached the file descriptors (or sys.stderr outside `call`), once the coroutines that orbax
    left pending are finalized."""
    gc.collect()
    fd_out, fd_err = capfd.readouterr()
    assert not fd_out and not fd_err, (name, fd_out, fd_err)


# every file by default, each damaged one way (each way two or three times over the files); every other pair slow
GRID = [pytest.param(glob, kind, marks=() if (i + j) % len(DAMAGE) == 0 else pytest.mark.slow, id=f"{glob}-{kind}")
        for i, glob in enumerate(FILES) for j, kind in enumerate(DAMAGE)]


@pytest.mark.parametrize(("glob", "kind"), GRID)
def test_any_damage_is_read_whole_or_refused_in_one_line(intact, call, capfd, tmp_path: Path, glob: str,
                                                         kind: str) -> None:
    """For each file the glob matches, in its own copy of the run: `sample` and `eval` give the intact output
    or exit 2 with one line naming checkpoint 2 and the `--step` that loads, both alike, leaving every file as
    it was; `runs` lists the run; `train --resume` ends as the run left alone, with checkpoint 2 set aside
    (not deleted) when it could not be read."""
    step_dir = intact.dir / checkpoint.CHECKPOINTS / "2"
    capfd.readouterr()
    for i, name in enumerate(sorted(p.relative_to(step_dir).as_posix() for p in step_dir.glob(glob))):
        run_dir = tmp_path / f"run{i}"
        shutil.copytree(intact.dir, run_dir)
        DAMAGE[kind](run_dir / checkpoint.CHECKPOINTS / "2" / name)
        before = snapshot(run_dir)
        damaged = {k[len("checkpoints/2/"):]: v for k, v in before.items() if k.startswith("checkpoints/2/")}
        refused = set()
        for cmd, args, want in [("sample", SAMPLE, intact.sample), ("eval", [], intact.eval)]:
            proc = call([cmd, "--run", run_dir, *args], tmp_path)
            if proc.returncode == 0:
                assert (proc.stdout, proc.stderr) == (want, ""), (name, cmd, proc.stderr)
            else:
                refused.add(cmd)
                assert proc.returncode == 2 and proc.stdout == "", (name, cmd, proc)
                assert re.fullmatch(rf"jaxrnn: error: checkpoint 2 in {re.escape(str(run_dir))} is damaged "
                                    r"\((meta|metrics|state): [^)]+\); pass --step 1, the latest checkpoint that "
                                    r"loads\n", proc.stderr), (name, cmd, proc.stderr)
        assert refused in (set(), {"sample", "eval"}), (name, refused)
        assert snapshot(run_dir) == before, name  # reading changed nothing

        listed = call(["runs", tmp_path], tmp_path)
        assert listed.returncode == 0 and listed.stderr == "", (name, listed.stderr)
        assert re.search(rf"^run{i} .* 2/2 epochs ", listed.stdout, re.M), (name, listed.stdout)

        resumed = call(["train", "--resume", run_dir], tmp_path)
        assert resumed.returncode == 0 and resumed.stdout == intact.line, (name, resumed.stderr)
        assert not NOISE.search(resumed.stderr), (name, resumed.stderr)
        if refused:
            assert re.search(r"^jaxrnn: warning: checkpoint 2 in .* is damaged \(.+\); moved it to .*damaged/2, "
                             r"trying an earlier one$", resumed.stderr, re.M), (name, resumed.stderr)
            assert re.search(r"^jaxrnn: resuming .* at epoch 1$", resumed.stderr, re.M), (name, resumed.stderr)
            assert snapshot(run_dir / "damaged" / "2") == damaged, name  # set aside, not deleted
        else:
            assert "finished all 2 epochs already" in resumed.stderr, (name, resumed.stderr)
        got = state_leaves(run_dir)
        assert got.keys() == intact.leaves.keys()
        assert all(np.array_equal(got[k], v) and got[k].dtype == v.dtype for k, v in intact.leaves.items()), name
        nothing_else_written(capfd, name)
