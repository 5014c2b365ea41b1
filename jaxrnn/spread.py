"""How much a figure moves with the seed: the mean, standard deviation and 95% interval of the mean of one
figure over the replicas of a group (Student's t: a handful of seeds is not a normal sample)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# t_{0.975} for 1..30 degrees of freedom; beyond, 1.96 + 2.4 / df is within 0.002 of it
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
        2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with `df` degrees of freedom."""
    return T975[df - 1] if df <= len(T975) else 1.96 + 2.4 / df


@dataclass(frozen=True)
class Spread:
    """A figure over n replicas: its mean, sample standard deviation (0 for one), and the 95% interval of
    the mean (the mean itself for one replica)."""

    n: int
    mean: float
    std: float
    lo: float
    hi: float

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        n = len(values)
        mean = math.fsum(values) / n
        std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        half = t975(n - 1) * std / math.sqrt(n) if n > 1 else 0.0
        return cls(n, mean, std, mean - half, mean + half)

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "mean": self.mean, "std": self.std, "lo": self.lo, "hi": self.hi}

    def __format__(self, spec: str) -> str:
        """'7.23 ± 0.04 (8 seeds, 95% interval 7.20-7.26)', each number in `spec` (default .2f)."""
        f = spec or ".2f"
        return (f"{self.mean:{f}} ± {self.std:{f}} ({self.n} seed{'s' if self.n != 1 else ''}, 95% interval "
                f"{self.lo:{f}}-{self.hi:{f}})")


def median_index(values: list[float]) -> int:
    """The index of the median value (the lower of the middle two for an even count)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    return order[(len(values) - 1) // 2]


def mean_record(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The replicas' records of one epoch (or evaluation) as one: each number's mean over them (a count of
    skipped steps: their sum), and the val loss' standard deviation as `val_loss_std` (what a group's
    progress line shows)."""
    first = records[0]
    def mean(k: str, v: Any) -> Any:
        vs = [r.get(k) for r in records]
        if all(x == v for x in vs) or isinstance(v, bool) or not all(isinstance(x, (int, float)) for x in vs):
            return v
        return sum(vs) if k == "skipped_steps" else math.fsum(vs) / len(vs)

    out = {k: mean(k, v) for k, v in first.items()}
    out["val_loss_std"] = Spread.of([r["val_loss"] for r in records]).std
    return out
