"""The registry's cells compared: at equal parameters on the seed's data, or at equal time on Tiny Shakespeare.

Equal parameters (the default): each model gets the hidden size that brings its parameter count closest to
the budget without going over (default: the one-layer tanh RNN at hidden 256), and all train alike: the
seed's windows (10000 train, 5000 validation, 32 steps), Adam, global-norm clipping at 1, each with `--seeds`
seeds trained as one program (`jaxrnn.train(cfg, seeds=N)`). Prints a markdown table (cell, layers, hidden,
parameters, the final and best validation perplexity's mean ± std over the seeds and the final one's 95%
interval, training seconds) to stdout and, with `--plot`, draws every model's mean validation perplexity per
epoch with its band over the seeds.

Equal time (`--race SECONDS ...`, e.g. `--race 100 600`): every cell on Tiny Shakespeare in the race's shape
(`--preset shakespeare-cpu`: one layer of 192, 64-character windows, batch 64, Adam with a warmed-up cosine
schedule; from 5 minutes the 10-minute recipe's two layers of 224 with dropout 0.15, and AdamW's decoupled
weight decay) as scratch cells with one init scale (`--sigma`, default 0.1, about Flax's); each cell gets the
optimizer steps its solo run makes in SECONDS on this machine (measured first, by a short solo run: its
steps/s, kept in DIR so a resumed comparison keeps its plan). A small sweep picks each cell's learning rate
(`--lr-factors` times the preset's, `--sweep-seeds` seeds each, as one program; a best at the sweep's edge goes one
factor further that way, up to `--extend` times), then `--seeds` seeds at the best one: the sweep's runs there (the
same seeds' runs) and the rest as one program (`jaxrnn sweep`'s programs, so a stopped comparison goes on with the
same command; a cell whose row DIR/race.json holds is not trained again, nor the sweep of a cell whose seeds are
not yet done, so a race.json kept elsewhere carries a comparison over to another machine or session with its plan;
a budget's rows of another shape than this command's are set aside in it, and the budget races anew). Prints a
markdown table per budget (cell, parameters, characters/s, steps, best lr, val loss mean ± std and its 95% interval
on the whole validation part; the sweep and the curves read the runs' own sampled validation; the median seed's
sample), says which cell is best and whether the next one's interval overlaps, writes DIR/race.json and draws
DIR/race-SECONDS.png (val loss against the solo run's wall time, bands over the seeds). Progress goes to stderr.
Run from the repo root:

    python experiments/compare_cells.py [--budget-hidden 256] [--epochs 20] [--lr 0.005] [--batch-size 256]
        [--impl scratch] [--seeds 5] [--plot cells.png] [--json-out FILE]
    python experiments/compare_cells.py --race 100 600 [--cells ...] [--seeds 5] [--out runs/race-cells]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

import jaxrnn
from jaxrnn import cells, run, rundir, sweep
from jaxrnn.config import PRESETS
from jaxrnn.errors import Stopped
from jaxrnn.parallel import use_cpu_cores
from jaxrnn.plots import plot_curves
from jaxrnn.spread import Spread, median_index
from jaxrnn.training import fit


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget-hidden", type=int, default=256, help="the budget is a 1-layer tanh RNN of this width")
    p.add_argument("--cells", nargs="+", choices=jaxrnn.config.CELLS, help="default rnn lstm gru; with --race: every "
                   "cell but gru-d2l")
    p.add_argument("--layers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.005, help="Adam's learning rate (default 0.005)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--impl", default="scratch", choices=["scratch", "flax"])
    p.add_argument("--seeds", type=int, default=5, help="seeds of each model, as one program (default 5)")
    p.add_argument("--plot", metavar="FILE", help="save the perplexity curves")
    p.add_argument("--json-out", metavar="FILE", help="also write the rows as JSON, after each model")
    race = p.add_argument_group("equal time on Tiny Shakespeare")
    race.add_argument("--race", nargs="+", type=float, metavar="SECONDS", help="the budgets, each cell's solo seconds")
    race.add_argument("--out", default="runs/race-cells", help="where the runs and race.json go (default %(default)s)")
    race.add_argument("--lr-factors", default="0.5,1,2", help="the sweep's rates, times the preset's (default 0.5,1,2)")
    race.add_argument("--sweep-seeds", type=int, default=1, help="seeds of each rate in the sweep (default 1)")
    race.add_argument("--extend", type=int, default=2, help="times a sweep whose best rate is its lowest or highest "
                      "goes one factor further that way (default 2)")
    race.add_argument("--sigma", type=float, default=0.1, help="every cell's init scale (default 0.1)")
    race.add_argument("--data", help="the corpus file (default Tiny Shakespeare, downloaded or $JAXRNN_DATA_DIR)")
    race.add_argument("--calibration-steps", type=int, default=100, help="the solo run that measures steps/s")
    return p.parse_args(argv)


def count_params(cfg: jaxrnn.Config, vocab_size: int) -> int:
    """Parameters of the model `cfg` names, from shapes only (nothing is initialised)."""
    shapes = jax.eval_shape(jaxrnn.build_model(cfg, vocab_size).init, jax.random.key(0))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(shapes))


def hidden_for(cfg: jaxrnn.Config, vocab_size: int, budget: int) -> int:
    """The largest hidden size whose model has at most `budget` parameters (bisection: the count
    grows with the hidden size), a multiple of the sLSTM's heads (its width splits into them)."""
    step = int(cells.with_defaults(cfg.cell, cfg.cell_options or {}).get("heads", 1))

    def fits(k: int) -> bool:
        return count_params(cfg.replace(hidden=k * step), vocab_size) <= budget

    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo * step


# every cell but d2l's GRU form (the GRU's twin, slower), the GRU of the race first, then the new cells
RACE_CELLS = ["gru", "minlstm", "lru", "rglru", "slstm", "lstm", "mingru", "indrnn", "rnn"]


# the race's shape from 5 minutes: the 10-minute recipe's with AdamW's decoupled weight decay, since at 35 passes
# over the text its GRU is limited by overfitting and decay is what moves it (docs/results.md)
LONG_RACE = {"optimizer": "adamw", "weight_decay": 0.16}


def race_shape(budget: float) -> dict[str, Any]:
    """The shape a budget races in, a preset and the settings over it: the race's (`shakespeare-cpu`, one layer
    of 192) under 5 minutes, the 10-minute recipe's (`shakespeare-10min`, two layers of 224, dropout 0.15) with
    `LONG_RACE` from there."""
    return {"preset": "shakespeare-cpu"} if budget < 300 else {"preset": "shakespeare-10min", **LONG_RACE}


def over_preset(shape: dict[str, Any]) -> dict[str, Any]:
    """A shape's settings over its preset."""
    return {k: v for k, v in shape.items() if k != "preset"}


def shape_text(shape: dict[str, Any]) -> str:
    """A shape as flags: `--preset P --optimizer adamw --weight-decay W`."""
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in shape.items())


def rate_key(cell: str, preset: str) -> str:
    """Where a cell's measured rate in a preset's shape is kept in the plan: by its name in the race's shape
    (the settings over a preset leave a step's cost as it is)."""
    return cell if preset == "shakespeare-cpu" else f"{cell} ({preset})"


def race_base(cell: str, shape: dict[str, Any], args: argparse.Namespace) -> jaxrnn.Config:
    """A cell's config in a race's shape, as scratch cells with one init scale."""
    base = PRESETS[shape["preset"]].replace(cell=cell, impl="scratch", sigma=args.sigma, **over_preset(shape))
    return base.replace(data=args.data) if args.data else base


def race_dir(budget: float, shape: dict[str, Any]) -> str:
    """A budget's runs' directory under --out: `600s`, then the settings' values over its preset
    (`600s-adamw-0.16`), so a budget raced again in another shape never meets the runs of the one before."""
    return f"{budget:g}s" + "".join(f"-{v}" for v in over_preset(shape).values())


def steps_per_s(cfg: jaxrnn.Config, corpus: jaxrnn.data.Corpus, steps: int) -> float:
    """A cell's solo training rate on this machine: optimizer steps per second of a `steps`-step run,
    compilation excluded."""
    short = cfg.replace(steps=steps, eval_every=steps, save_every=steps, warmup=min(cfg.warmup, steps - 1))
    timings: dict[str, float] = {}
    fit(short, corpus, jaxrnn.build_model(short, len(corpus.vocab)), timings=timings)
    return steps / timings["train_s"]


def whole_val(replicas: list[Path], prompt: str, n: int) -> tuple[list[float], str]:
    """Each replica of a group on the whole validation part (as `jaxrnn eval` reads it; the runs' own
    validation is a sample of batches), and the greedy sample of the replica with the median."""
    trained = [jaxrnn.load(d) for d in replicas]
    losses = [jaxrnn.evaluate(t) for t in trained]
    return losses, trained[median_index(losses)].predict(prompt, n)


def race_config(cell: str, budget: float, args: argparse.Namespace, plan: dict[str, Any]
                ) -> tuple[jaxrnn.Config, float, Path]:
    """A cell's config at one budget, its steps its measured rate (`plan`) times the budget; the rate, and
    the directory its sweep and seeds go in."""
    shape = race_shape(budget)
    rate = plan["steps_per_s"][rate_key(cell, shape["preset"])]
    steps = max(round(budget * rate), 10)
    cfg = race_base(cell, shape, args).replace(steps=steps, eval_every=max(steps // 5, 1),
                                                save_every=max(steps // 5, 1))
    return cfg, rate, Path(args.out) / race_dir(budget, shape) / cell


def race_seeds(cfg: jaxrnn.Config, lr: float, seeds: int, where: Path) -> list[Path]:
    """The runs of a cell's seeds at one rate: those its rate sweep trained there (a seed at a rate is the same run
    in the sweep as among the seeds; training it again would add nothing), the rest as one program in
    `where`/seeds-lrLR (a rate's own, so seeds begun at a rate before its sweep ends are kept only if the sweep
    picks it; all the seeds found done there are kept as they are)."""
    out, want = where / f"seeds-lr{lr:g}", run.seed_list(cfg, seeds)
    begun = out / sweep.SWEEP
    whole = begun.exists() and json.loads(begun.read_text())["plan"]["seeds"] == list(want)
    runs = {} if whole else swept_runs(where, lr)
    rest = tuple(s for s in want if s not in runs)
    if rest:
        runs.update(group_runs(out / sweep.run_sweep(cfg, {"lr": [lr]}, rest, out, progress=False, say=say)[0]["dir"]))
    return [runs[s] for s in want]


def swept_runs(where: Path, lr: float) -> dict[int, Path]:
    """The runs (by seed) a cell's rate sweep trained at `lr`, in `where`/sweep*/; none if it did not."""
    for saved in sorted(where.glob(f"sweep*/{sweep.SWEEP}")):
        for row in json.loads(saved.read_text())["rows"]:
            if row["settings"]["lr"] == lr:
                return group_runs(saved.parent / row["dir"])
    return {}


def group_runs(point: Path) -> dict[int, Path]:
    """A group's replicas' run directories, by seed (its group.json)."""
    group = json.loads((point / rundir.GROUP).read_text())
    return {s: point / r for s, r in zip(group["seeds"], group["replicas"], strict=True)}


def race_cell(cell: str, budget: float, args: argparse.Namespace, plan: dict[str, Any],
              sweeps: dict[str, list[dict[str, Any]]], save: Callable[[], None]) -> dict[str, Any]:
    """One cell at one budget: the rate sweep, then the seeds at the best rate; its row. A finished sweep goes
    into `sweeps` (the budget's, by cell) and is saved at once, so a comparison carried to another machine
    trains only the seeds; one found there is not run again."""
    cfg, rate, where = race_config(cell, budget, args, plan)
    corpus = jaxrnn.corpus_for(cfg)
    swept = sweeps.get(cell)
    if swept is None or not settled(swept, args):
        sweeps[cell] = swept = sweep_rates(cfg, cell, budget, where, args)
        save()
    best_lr = min(swept, key=lambda r: r["val_loss"]["mean"])["lr"]
    say(f"{cell}, {budget:g} s: lr {best_lr} is best; {args.seeds} seeds there")
    replicas = race_seeds(cfg, best_lr, args.seeds, where)
    histories = [rundir.read_metrics(d) for d in replicas]
    losses, sample = whole_val(replicas, corpus.prompt, 60)
    sampled = Spread.of([h[-1]["val_loss"] for h in histories]).to_dict()  # the runs' own last validation
    return {"cell": cell, "budget_s": budget, "params": count_params(cfg, len(corpus.vocab)), "steps": cfg.steps,
            "chars_per_s": rate * cfg.batch_size * cfg.num_steps, "lr": best_lr, "sweep": swept,
            "val_loss": Spread.of(losses).to_dict(), "val_loss_sampled": sampled, "sample": sample,
            "curves": [[(r["step"] / rate, r["val_loss"]) for r in h] for h in histories]}


def sweep_rates(cfg: jaxrnn.Config, cell: str, budget: float, where: Path, args: argparse.Namespace
                ) -> list[dict[str, Any]]:
    """A cell's rate sweep (`--lr-factors` times the preset's rate, `--sweep-seeds` each, as one program), one
    factor further while its best is at an edge (`--extend` times at most): its {"lr", "val_loss"} rows."""
    lrs = [round(cfg.lr * float(f), 6) for f in args.lr_factors.split(",")]
    say(f"{cell}, {budget:g} s: {cfg.steps} steps; sweeping lr {lrs}")
    swept = sweep.run_sweep(cfg, {"lr": lrs}, args.sweep_seeds, where / "sweep", progress=False, say=say)
    for _ in range(args.extend):  # a best at the sweep's edge may not be the best: one rate further that way
        further = beyond([{"lr": r["settings"]["lr"], "val_loss": r["val_loss"]} for r in swept], lr_step(args))
        if further is None:
            break
        say(f"{cell}, {budget:g} s: the best rate is the sweep's edge; trying lr {further}")
        swept += sweep.run_sweep(cfg, {"lr": [further]}, args.sweep_seeds, where / f"sweep-lr{further:g}",
                                 progress=False, say=say)
    return [{"lr": r["settings"]["lr"], "val_loss": r["val_loss"]} for r in swept]


def settled(swept: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """Whether a kept sweep is one this command would end with: its best inside its rates, or extended as far
    as `--extend` lets it (a sweep kept from before the sweep went past its edges is not)."""
    return beyond(swept, lr_step(args)) is None or len(swept) >= len(args.lr_factors.split(",")) + args.extend


def lr_step(args: argparse.Namespace) -> float:
    """The ratio of the sweep's two highest factors: how much further an extension goes (2 for 0.5,1,2)."""
    factors = sorted(float(f) for f in args.lr_factors.split(","))
    return factors[-1] / factors[-2] if len(factors) > 1 else 2.0


def beyond(swept: list[dict[str, Any]], step: float) -> float | None:
    """The next rate to try when a sweep's best ({"lr", "val_loss"} rows) is its lowest or highest rate: one
    `step` (the sweep's ratio) further that way; None when the best is inside the sweep."""
    rates = sorted(r["lr"] for r in swept)
    best = min(swept, key=lambda r: r["val_loss"]["mean"])["lr"]
    if len(rates) < 2 or rates[0] < best < rates[-1]:
        return None
    return round(best * step if best == rates[-1] else best / step, 6)


def race_table(rows: list[dict[str, Any]]) -> str:
    """A budget's rows as markdown, best first, and which cell is best with whether the next one's interval
    of the mean overlaps its own."""
    rows = sorted(rows, key=lambda r: r["val_loss"]["mean"])
    lines = ["| cell | params | chars/s | steps | lr | val loss | 95% interval | sample |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in rows:
        loss = Spread(**r["val_loss"])
        text = r["sample"].replace("\n", " / ").replace("|", "/")
        lines.append(f"| {r['cell']} | {r['params']:,} | {r['chars_per_s']:,.0f} | {r['steps']} | {r['lr']:g} | "
                     f"{loss.mean:.3f} ± {loss.std:.3f} | {loss.lo:.3f}-{loss.hi:.3f} | {text!r} |")
    if len(rows) > 1:
        a, b = Spread(**rows[0]["val_loss"]), Spread(**rows[1]["val_loss"])
        apart = "apart: the difference is real" if a.hi < b.lo else "overlapping: the seeds do not separate them"
        lines.append(f"\nbest: {rows[0]['cell']} ({a.lo:.3f}-{a.hi:.3f}); next: {rows[1]['cell']} "
                     f"({b.lo:.3f}-{b.hi:.3f}), {apart}")
    return "\n".join(lines)


def race_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Val loss against the solo run's wall time, each cell's mean over its seeds in a band from the lowest
    to the highest, best first."""
    curves = {r["cell"]: [[{"seconds": t, "val_loss": loss} for t, loss in c] for c in r["curves"]]
              for r in sorted(rows, key=lambda r: r["val_loss"]["mean"])}
    plot_curves(curves, path, splits=("val",), x="seconds", y="loss")


def set_aside(kept: dict[str, Any], budgets: list[float]) -> list[str]:
    """Moves a budget's rows and sweeps that race.json (`kept`) holds in another shape than `race_shape`'s into
    its 'superseded' list, so a new shape starts anew and nothing is lost, and records each budget's shape; the
    budgets set aside. A race.json from before shapes were kept raced each budget in its preset alone."""
    moved = []
    shapes, rows, sweeps = kept.setdefault("shapes", {}), kept["budgets"], kept.setdefault("sweeps", {})
    for budget in budgets:
        key, shape = f"{budget:g}", race_shape(budget)
        was = shapes.get(key, {"preset": shape["preset"]})
        if was != shape and (rows.get(key) or sweeps.get(key)):
            kept.setdefault("superseded", []).append({"budget_s": budget, "shape": was, "rows": rows.pop(key, []),
                                                      "sweeps": sweeps.pop(key, {})})
            moved.append(key)
        shapes[key] = shape
    return moved


def race(args: argparse.Namespace) -> int:
    """Every cell at every budget; the tables, race.json and the plots."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    saved = out / "race.json"
    kept = json.loads(saved.read_text()) if saved.exists() else {"plan": {"steps_per_s": {}}, "budgets": {}}
    plan = kept["plan"]
    for preset in dict.fromkeys(race_shape(b)["preset"] for b in args.race):  # every rate first, on a quiet machine
        for cell in args.cells or RACE_CELLS:
            key = rate_key(cell, preset)
            if key not in plan["steps_per_s"]:  # kept for good: a resumed comparison keeps its steps
                base = race_base(cell, {"preset": preset}, args)
                plan["steps_per_s"][key] = steps_per_s(base, jaxrnn.corpus_for(base), args.calibration_steps)
                say(f"{cell}, {preset}: {plan['steps_per_s'][key]:.1f} steps/s solo")
    for key in set_aside(kept, args.race):
        say(f"{key} s: race.json's rows of another shape set aside under 'superseded'; it races anew in "
            f"{shape_text(kept['shapes'][key])}")
    results: dict[str, list[dict[str, Any]]] = kept["budgets"]  # a cell whose row is kept is not trained again
    sweeps: dict[str, dict[str, Any]] = kept["sweeps"]  # a cell swept, its seeds not done: not swept again

    def save() -> None:
        saved.write_text(json.dumps(kept, indent=1))

    save()
    for budget in args.race:  # each budget's table as soon as its cells are done
        rows, swept = results.setdefault(f"{budget:g}", []), sweeps.setdefault(f"{budget:g}", {})  # by cell
        for cell in args.cells or RACE_CELLS:
            mine = [r for r in rows if r["cell"] == cell]
            if mine and not settled(mine[0]["sweep"], args):  # kept from before the sweep went past its edges
                rows.remove(mine[0])
                mine = []
            if not mine:
                rows.append(race_cell(cell, budget, args, plan, swept, save))
                swept.pop(cell)  # the row carries it
            save()
        print(f"\n{budget:g} s a cell (its solo run's time on {jax.devices()[0].platform}) in the shape of "
              f"{shape_text(race_shape(budget))}, {args.seeds} seeds at the best of lr x {args.lr_factors}, sigma "
              f"{args.sigma}:\n")
        shown = [r for r in rows if r["cell"] in (args.cells or RACE_CELLS)]
        print(race_table(shown), flush=True)
        race_plot(shown, out / f"race-{budget:g}.png")
        say(f"wrote {out / f'race-{budget:g}.png'}")
    return 0


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_cpu_cores(None, args.batch_size)  # as `jaxrnn train` does: one XLA device per CPU core
    if args.race:
        try:
            return race(args)
        except jaxrnn.JaxrnnError as e:
            print(f"jaxrnn: error: {e}", file=sys.stderr)
            return 2
        except Stopped as e:  # its checkpoints saved: the same command goes on
            print(f"jaxrnn: {e}; run the same command again to go on", file=sys.stderr)
            return 128 + e.signum
    args.cells = args.cells or ["rnn", "lstm", "gru"]
    try:
        base = jaxrnn.Config(impl=args.impl, epochs=args.epochs, lr=args.lr, optimizer="adam",
                             batch_size=args.batch_size, save_every=args.epochs)
        corpus = jaxrnn.corpus_for(base)
        V = len(corpus.vocab)
        budget = count_params(base.replace(hidden=args.budget_hidden), V)
        rows, histories = [], {}
        for layers in args.layers:
            for cell in args.cells:
                cfg = base.replace(cell=cell, layers=layers)
                cfg = cfg.replace(hidden=hidden_for(cfg, V, budget))
                name = f"{cell} x{layers}"
                print(f"training {name}: hidden {cfg.hidden}, {count_params(cfg, V)} parameters", file=sys.stderr)
                t0 = time.perf_counter()
                group = jaxrnn.train(cfg, corpus=corpus, seeds=args.seeds)
                seconds = time.perf_counter() - t0
                histories[name] = [t.history for t in group.replicas]  # drawn as the mean with its band
                best = Spread.of([min(r["val_ppl"] for r in t.history) for t in group.replicas])
                rows.append({"cell": cell, "layers": layers, "hidden": cfg.hidden, "params": count_params(cfg, V),
                             "val_ppl": group.summary()["val_ppl"], "best_val_ppl": best.to_dict(),
                             "seconds": seconds, "sample": group.median.predict("time traveller", 40)})
                if args.json_out:  # after every model, so a comparison cut short keeps what it trained
                    Path(args.json_out).write_text(json.dumps(rows, indent=1))
    except jaxrnn.JaxrnnError as e:
        print(f"jaxrnn: error: {e}", file=sys.stderr)
        return 2
    print(f"budget: {budget} parameters (1-layer tanh RNN, hidden {args.budget_hidden}); {args.impl} cells, "
          f"Adam lr {args.lr}, batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds, "
          f"{jax.devices()[0].platform}")
    print("| cell | layers | hidden | params | best val ppl | final val ppl | final's 95% interval | seconds |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        final, best = Spread(**r["val_ppl"]), Spread(**r["best_val_ppl"])
        print(f"| {r['cell']} | {r['layers']} | {r['hidden']} | {r['params']:,} | {best.mean:.2f} ± {best.std:.2f} | "
              f"{final.mean:.2f} ± {final.std:.2f} | {final.lo:.2f}-{final.hi:.2f} | {r['seconds']:.1f} |")
    if args.plot:
        print(f"wrote {plot_curves(histories, args.plot, log_scale=True, splits=('val',))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
