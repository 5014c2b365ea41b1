"""The chapters' training curves: train and validation perplexity per epoch, one or several runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxrnn.errors import JaxrnnError


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path, log_scale: bool = False,
                splits: tuple[str, ...] = ("train", "val")) -> Path:
    """Draw each run's train (solid) and validation (dashed) perplexity against epoch into `path`
    (only the `splits` asked for)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise JaxrnnError(f"matplotlib is not installed, so {path} cannot be drawn; pip install matplotlib") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (name, history) in enumerate(histories.items()):
        epochs = [r["epoch"] for r in history]
        prefix = f"{name} " if name else ""
        for split, style in (("train", "-"), ("val", "--")):
            if split in splits:
                ax.plot(epochs, [r[f"{split}_ppl"] for r in history], style, color=f"C{i}",
                        label=f"{prefix}{split} ppl")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log" if log_scale else "linear")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return Path(path)
