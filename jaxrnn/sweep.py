"""`jaxrnn sweep`: a grid of settings times the seeds, each point of the grid a group of replicas, every
point's spread in one table. Points that differ only by the optimizer's values (lr, clip, weight decay)
and the init scale (sigma) train with all their seeds as one program (`run.train_groups`); points that
change the program (hidden, cell, batch size, ...) run as programs one after another.

A sweep's directory holds `sweep.json` (the base config, the grid, the seeds, and each finished point's
spread, written after every program) and a group directory per point, `point-K/`; `sweep.png` draws each
point's validation curve with its band over the seeds. Run again with the same flags and `--out`, a
stopped sweep goes on where it stopped: finished points are read back, a stopped one resumes exactly.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path
from typing import Any

from jaxrnn import rundir, strict_json
from jaxrnn.config import Config, field_kind
from jaxrnn.errors import ConfigError, JaxrnnError, SettingError, Stopped
from jaxrnn.execution import resolve
from jaxrnn.replicas import program_of
from jaxrnn.run import Group, log, resume_groups, seed_list, train_groups
from jaxrnn.spread import Spread

SWEEP = "sweep.json"
NOT_GRIDDED = {"data": "the corpus", "seed": "the seeds (--seeds)", "model": "an alias (grid --cell and --impl)",
               "gru_reset": "an alias (grid --cell)", "cell_options": "a cell's options"}
TRUE, FALSE = ("true", "on", "yes", "1"), ("false", "off", "no", "0")


def parse_grid(specs: list[str]) -> dict[str, list[Any]]:
    """`--grid NAME=V1,V2,...` (each a Config field, in its flag's spelling or the field's) as {field: values}."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    grid: dict[str, list[Any]] = {}
    for spec in specs:
        name, eq, values = spec.partition("=")
        key = name.strip().lstrip("-").replace("-", "_")
        key = {"window": "num_steps"}.get(key, key)
        if not eq or not key:
            raise ConfigError(f"--grid {spec!r} is not NAME=V1,V2,...; pass e.g. --grid lr=0.5,1,2")
        if key == "out" or key in NOT_GRIDDED or key not in fields:
            what = "the sweep's directory" if key == "out" else NOT_GRIDDED.get(key)
            raise ConfigError(f"--grid {name} " + (f"is {what}, not a setting to sweep" if what else
                                                  "is not a setting of jaxrnn train") + "; grid another setting, "
                              "e.g. --grid lr=0.5,1,2")
        if key in grid:
            raise ConfigError(f"--grid {name} is given twice; give its values once, e.g. --grid {name}=1,2")
        kind = field_kind(fields[key])
        raw = [v.strip() for v in values.split(",")] if kind is not tuple else values.split(";")
        if not raw or any(v == "" for v in raw):
            raise ConfigError(f"--grid {spec!r} has an empty value; pass its values separated by commas")
        grid[key] = [_value(key, kind, v) for v in raw]
        if len(set(map(repr, grid[key]))) != len(grid[key]):
            raise ConfigError(f"--grid {name} repeats a value; give each value once")
    if not grid:
        raise ConfigError("a sweep needs at least one --grid NAME=V1,V2,...; pass e.g. --grid lr=0.5,1,2")
    return grid


def _value(key: str, kind: type, text: str) -> Any:
    try:
        if kind is bool:
            if text.lower() not in TRUE + FALSE:
                raise ValueError
            return text.lower() in TRUE
        if kind is tuple:
            return tuple(float(x) for x in text.split(","))
        return kind(text)
    except ValueError:
        words = {int: "a whole number", float: "a number", bool: "true or false", tuple: "fractions"}[kind]
        raise ConfigError(f"--grid {key.replace('_', '-')} value {text!r} is not {words}; pass e.g. "
                          f"--grid {key.replace('_', '-')}=" + {int: "32,64", float: "0.5,1", bool: "true,false",
                                                                 tuple: "0.8,0.1,0.1;0.9,0.1,0"}[kind]) from None


def points(base: Config, grid: dict[str, list[Any]]) -> list[Config]:
    """Every combination of the grid's values on `base`, each a validated config (a bad one refused now)."""
    out = []
    for values in itertools.product(*grid.values()):
        changes = dict(zip(grid, values))
        try:
            out.append(base.replace(**changes))
            resolve(out[-1])  # the model it names can be built (a cell without a Flax twin, say)
        except SettingError as e:
            raise ConfigError(f"--grid {e.key.replace('_', '-')} {changes[e.key]!r}: {e.problem}; {e.advice}") from None
        except ConfigError as e:
            raise ConfigError(f"the grid point {_label(changes)} cannot train: {e}") from None
    return out


def _label(changes: dict[str, Any]) -> str:
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in changes.items())


def run_sweep(base: Config, grid: dict[str, list[Any]], seeds: int | tuple[int, ...], out: Path, force: bool = False,
              progress: Any = True, say: Any = log) -> list[dict[str, Any]]:
    """Train every point of the grid as a group of `seeds` into `out/point-K/`, writing sweep.json after each
    program: points that differ only by settings that leave the program as it is (`replicas.SHARED`: lr,
    clip, weight decay, warm-up, sigma, dropout) train together as one program (`run.train_groups`), the
    others one after another.
    A sweep already begun in `out` with the same plan goes on where it stopped (`say`: where each
    program's start is told; None: nowhere). Returns each point's row (its settings, the spread of its
    final val loss, ppl and bpc, tokens/s), in the order of the points."""
    cfgs, seeds = points(base, grid), seed_list(base, seeds)
    plan = {"base": base.to_dict(), "grid": grid, "seeds": list(seeds)}
    saved = _read(out)
    if not force and (saved is not None and json.loads(strict_json.dumps(plan)) != saved["plan"]
                      or saved is None and out.is_dir() and any(out.iterdir())):
        raise JaxrnnError(f"{out} holds another sweep (or something else); pass --force to replace it, or --out "
                          "NEW_DIR")
    rows = {} if saved is None or force else {r["point"]: r for r in saved["rows"]}
    _write(out, plan, list(rows.values()))  # the plan first: a sweep stopped in its first point is still its own
    for ks in programs(cfgs):
        todo = [k for k in ks if k not in rows]
        if not todo:
            continue
        if say is not None:
            told = " | ".join(_label({name: getattr(cfgs[k], name) for name in grid}) for k in todo)
            which = f"point {todo[0] + 1}" if len(todo) == 1 else "points " + ", ".join(str(k + 1) for k in todo)
            say(f"jaxrnn: sweep {which} of {len(cfgs)}" + (" as one program" if len(todo) > 1 else "") + f": {told}")
        dirs = [out / f"point-{k}" for k in todo]
        begun = [rundir.read_group(d) is not None for d in dirs]
        try:
            if all(begun) and not force:
                groups = resume_groups(dirs, progress=progress)
            else:  # none begun, or some stopped while being written: this sweep's own directories, made anew
                groups = train_groups([cfgs[k] for k in todo], dirs, seeds, progress=progress,
                                      force=force or any(begun))
        except Stopped as e:  # its points' groups go on with the sweep, not one by one
            raise Stopped(e.signum, e.epoch, e.run_dir, e.unit, e.compiling,
                          again=f"the same 'jaxrnn sweep ... --out {out}'") from None
        for k, group in zip(todo, groups):
            rows[k] = _row(k, {name: getattr(cfgs[k], name) for name in grid}, group)
        _write(out, plan, [rows[k] for k in sorted(rows)])
    return [rows[k] for k in range(len(cfgs))]


def programs(cfgs: list[Config]) -> list[list[int]]:
    """The points (their indices) that train as one program: those that share `replicas.program_of`, in the
    order of each program's first point."""
    by: dict[str, list[int]] = {}
    for k, cfg in enumerate(cfgs):
        by.setdefault(strict_json.dumps(program_of(cfg)), []).append(k)
    return list(by.values())


def _row(k: int, changes: dict[str, Any], group: Group) -> dict[str, Any]:
    last = [t.history[-1] for t in group.replicas]
    speed = [r["tokens_per_s"] for r in last if r.get("tokens_per_s")]
    summary = group.summary()
    return {"point": k, "settings": changes, "dir": f"point-{k}", "val_loss": summary["val_loss"],
            "val_ppl": summary["val_ppl"], "val_bpc": summary["val_bpc"],
            "tokens_per_s": math.fsum(speed) / len(speed) if speed else None}


def _read(out: Path) -> dict[str, Any] | None:
    try:
        saved = json.loads((out / SWEEP).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise JaxrnnError(f"cannot read {out / SWEEP} ({e}); restore it, or pass --force to start the sweep anew") \
            from None
    return saved


def _write(out: Path, plan: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rundir.write_text(out / SWEEP, strict_json.dumps({"plan": plan, "rows": rows}, indent=2) + "\n")


def table(rows: list[dict[str, Any]]) -> str:
    """The points, best (lowest mean val loss) first: settings, val loss mean ± std and its 95% interval,
    ppl, bpc, tokens/s."""
    head = ["point", *rows[0]["settings"], "val loss", "95% interval", "val ppl", "val bpc", "tokens/s"]
    body = []
    for r in sorted(rows, key=lambda r: r["val_loss"]["mean"]):
        loss = Spread(**r["val_loss"])
        body.append([r["dir"], *(str(v) for v in r["settings"].values()), f"{loss.mean:.3f} ± {loss.std:.3f}",
                     f"{loss.lo:.3f}-{loss.hi:.3f}", f"{r['val_ppl']['mean']:.2f}", f"{r['val_bpc']['mean']:.3f}",
                     f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in [head, *body])
