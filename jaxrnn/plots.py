"""The chapters' training curves: train and validation perplexity per epoch, one or several runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxrnn.errors import JaxrnnError


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str | Path, log_scale: bool = False) -> Path:
    """Draw each run's train (solid) and validation (dashed) perplexity against epoch into `path`."""
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
        ax.plot(epochs, [r["train_ppl"] for r in history], "-", color=f"C{i}", label=f"{prefix}train ppl")
        ax.plot(epochs, [r["val_ppl"] for r in history], "--", color=f"C{i}", label=f"{prefix}val ppl")
    ax.set(xlabel="epoch", ylabel="perplexity", yscale="log" if log_scale else "linear")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, bbox_inches="tight", dpi=120)
    plt.close(fig)
    return Path(path)
