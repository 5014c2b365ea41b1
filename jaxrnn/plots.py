"""The chapters' training curves: train and validation perplexity per epoch (or loss, or against another
record key), one or several runs, a group as its mean in a band."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jaxrnn.errors import JaxrnnError, write_failure

LABELS = {"epoch": "epoch", "seconds": "seconds (the solo run's)", "ppl": "perplexity", "loss": "loss (nats)"}


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path, log_scale: bool = False,
                splits: tuple[str, ...] = ("train", "val"), x: str = "epoch", y: str = "ppl") -> Path:
    """Draw each run's train (solid) and validation (dashed) `y` (records' `train_ppl`, `val_ppl`; or
    `..._loss`) against `x` (records' `epoch`, or another key) into `path`, atomically (a reader never
    sees half a file); a group's (its value a list of its replicas' histories) as the mean over its seeds
    in a band from their lowest to their highest. Uses matplotlib's object API, not pyplot, so it is safe
    off the main thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogFormatter

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, (name, history) in enumerate(histories.items()):
        runs = history if history and isinstance(history[0], list) else [history]
        n = min(len(h) for h in runs)
        xs = [r[x] for r in runs[0][:n]]
        prefix = f"{name} " if name else ""
        seeds = f" (mean of {len(runs)} seeds)" if len(runs) > 1 else ""
        for split, style in (("train", "-"), ("val", "--")):
            if split in splits:
                ys = [[r[f"{split}_{y}"] for r in h[:n]] for h in runs]
                ax.plot(xs, [sum(c) / len(c) for c in zip(*ys)], style, color=f"C{i % 10}",
                        label=f"{prefix}{split} {y}{seeds}")
                if len(runs) > 1:
                    ax.fill_between(xs, [min(c) for c in zip(*ys)], [max(c) for c in zip(*ys)],
                                    color=f"C{i % 10}", alpha=0.2, linewidth=0)
    ax.set(xlabel=LABELS.get(x, x), ylabel=LABELS.get(y, y) + (" (log scale)" if log_scale else ""),
           yscale="log" if log_scale else "linear")
    if log_scale:  # plain numbers (6, 10, 20) rather than 6x10^0; minor labels only where few decades show
        for axis_formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
            axis_formatter(LogFormatter(labelOnlyBase=False))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="upper right")  # "best" searches every point: slow on long runs
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", bbox_inches="tight", dpi=120)
        tmp.replace(path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        why, advice = write_failure(e, path.parent)
        raise JaxrnnError(f"cannot write {path} ({why}); {advice}") from None
    return path


def legend_names(paths: Sequence[str]) -> list[str]:
    """The shortest trailing parts of the runs' paths that tell them apart (`concise`, `a/lstm` and `b/lstm`):
    a legend of long absolute paths would cover the curves."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(map(len, parts)) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same directory named twice
