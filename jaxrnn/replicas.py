"""Replicas trained as one program: which configs can share one (`program_of`: they differ by their seed,
the optimizer's values `TUNED`, the init's `INIT` and the model's `DROPPED`), and `Replicas`, how a group's
replicas are laid out over the devices, padded, initialised and told apart inside the program (their knobs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxrnn.config import Config
from jaxrnn.errors import ConfigError
from jaxrnn.models import LanguageModel
from jaxrnn.parallel import AXIS, Layout
from jaxrnn.steps import TrainState, init_state

TUNED = ("lr", "clip", "weight_decay", "warmup")
"""Settings whose values reach only the optimizer's arithmetic: replicas that differ in them (and their seed)
train as one program, each with its own values (`make_optimizer`'s `tuned`, `steps.Knobs`)."""

DROPPED = ("dropout",)
"""Settings whose values reach the model's forward pass as arguments: replicas that differ in dropout's rate
train as one program, each drawing its masks with its own keep probability (`steps.Knobs`' `keep`)."""


INIT = ("sigma",)
"""Settings that only the initialisation reads: replicas that differ in them are initialised each as its solo
run is (`init_replicas`) and then train as one program."""


SHARED = TUNED + INIT + DROPPED
"""The settings besides the seed whose values may differ inside one program."""

WHETHER = {"decays": "whether there is weight decay", "warms": "whether there is warm-up",
           "drops": "whether there is dropout"}
"""Of some SHARED settings the program depends on whether they are used at all, by these names."""


def program_of(cfg: Config) -> dict[str, Any]:
    """What a config's training program depends on: every setting but the seed and the SHARED ones, and of
    these whether there is weight decay (SGD's and Adam's decay is a stage of its own, AdamW's is always),
    warm-up (a schedule's step count in the optimizer state) and dropout (masks drawn at all)."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", *SHARED)}
    return {**d, "decays": cfg.optimizer == "adamw" or bool(cfg.weight_decay), "warms": bool(cfg.warmup),
            "drops": bool(cfg.dropout)}


def one_program(cfgs: list[Config], what: str) -> None:
    """Refuse configs that cannot train as one program: they may differ by their seed and SHARED settings."""
    first = program_of(cfgs[0])
    for c in cfgs[1:]:
        diff = sorted(k for k, v in program_of(c).items() if first[k] != v)
        if diff:
            named = ", ".join(WHETHER.get(k, k) for k in diff)
            raise ConfigError(f"{what} differ in {named}, which changes the program; one program trains replicas "
                              f"that differ only by their seed and values of {', '.join(SHARED)} (not whether "
                              "there is warm-up, dropout, or weight decay with SGD or Adam): train the others apart")


class Replicas(NamedTuple):
    """The replicas of a group trained as one program (each a config: its seed, and its own values of the
    TUNED settings in a sweep's program) and where their arrays live: as many as the devices or more, split
    over them, padded to a multiple of them (the padding trains a copy of the last replica, never
    reported); fewer, each replica split over the devices by its batch, as a solo run."""

    cfgs: tuple[Config, ...]  # the group's own
    padded: tuple[Config, ...]
    split: bool  # the replicas split over the devices (else each one's batch is)
    mesh: Any

    @property
    def by_replica(self) -> NamedSharding:
        """Where an array whose leading axis is the replica lives (its state, its knobs)."""
        return NamedSharding(self.mesh, P(AXIS) if self.split else P())

    def batched(self, ndim: int) -> NamedSharding:
        """Where the replicas' stacked plans (or states) live whose batch is axis `batch` of `ndim`."""
        return self.by_replica if self.split else NamedSharding(self.mesh, P(*[None] * (ndim - 1), AXIS))

    def rows(self) -> NamedSharding:
        """Where the replicas' recurrent states [R, B, H] live."""
        return self.by_replica if self.split else NamedSharding(self.mesh, P(None, AXIS))

    def pad(self, state: Any) -> Any:
        """A stacked state of the group's own replicas with the padding's copies of the last."""
        extra = len(self.padded) - len(self.cfgs)
        return state if not extra else jax.tree.map(lambda x: np.concatenate([x, np.repeat(x[-1:], extra, 0)]), state)

    @classmethod
    def of(cls, cfgs: tuple[Config, ...], lay: Layout, like: int | None = None) -> Replicas:
        """`cfgs` on the layout's devices, laid out as `like` replicas would be (split or not; default: as many
        as `cfgs`), so that some of a group's replicas train bit for bit as in the whole group."""
        split = (like or len(cfgs)) >= lay.devices
        pad = -len(cfgs) % lay.devices if split else 0
        return cls(cfgs, cfgs + cfgs[-1:] * pad, split, lay.mesh)

    def stacked(self, make: Callable[[Config], Any]) -> Any:
        """`make(cfg)` of every padded replica (numpy), stacked along a leading replica axis."""
        return jax.tree.map(lambda *xs: np.stack(xs), *[make(c) for c in self.padded])

    def differing(self, names: tuple[str, ...]) -> list[str]:
        """Those of the settings `names` whose values differ between the replicas."""
        return [k for k in names if len({getattr(c, k) for c in self.cfgs}) > 1]

    def name(self, k: int) -> str:
        """Replica `k` as its errors name it: 'seed 3', or 'seed 3, lr=2.0' where the replicas' rates differ."""
        c = self.cfgs[k]
        own = self.differing(SHARED)
        return ", ".join([f"seed {c.seed}", *(f"{t.replace('_', '-')}={getattr(c, t)}" for t in own)])

    def knobs(self) -> Any:
        """Each replica's seed, stacked, or where TUNED or DROPPED settings differ between the replicas a dict
        of it and their values (warm-up an int32, dropout as its `keep` probability, as the solo run rounds it)."""
        tuned, drops = self.differing(TUNED), self.differing(DROPPED)
        if not tuned and not drops:
            return self.stacked(lambda c: np.int32(c.seed))

        def own(c: Config) -> dict[str, np.ndarray]:
            values = {k: (np.int32 if k == "warmup" else np.float32)(getattr(c, k)) for k in tuned}
            return {"seed": np.int32(c.seed), **values, **({"keep": np.float32(1.0 - c.dropout)} if drops else {})}
        return self.stacked(own)


def init_replicas(model: LanguageModel, tx: optax.GradientTransformation, cfgs: tuple[Config, ...]) -> TrainState:
    """Each replica's initial state as its solo run makes it (its seed, and its INIT settings: the model's init
    scale), stacked in their order; one compiled call for each distinct init scale."""
    by: dict[float, list[int]] = {}
    for k, c in enumerate(cfgs):
        by.setdefault(c.sigma, []).append(k)
    parts = [init_state(dataclasses.replace(model, cfg=dataclasses.replace(model.cfg, sigma=sigma)), tx,
                        tuple(cfgs[k].seed for k in ks)) for sigma, ks in by.items()]
    if len(parts) == 1:
        return parts[0]
    back = np.argsort([k for ks in by.values() for k in ks])  # from the parts' order to the replicas'
    return jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs])[back], *parts)
