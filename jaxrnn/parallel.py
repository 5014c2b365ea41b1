"""Data parallelism with `jax.sharding`: one code path for 1 and N devices.

A 1-D mesh with a `data` axis; batch plans are sharded along it, the windows, parameters and
optimizer state replicated, and the train step is jitted with those shardings; the gradient is a
`shard_map` over the `data` axis with one `psum` (`training.Steps.grad_sums`). On a CPU, the CLI makes
one XLA device per core (`use_cpu_cores`), which trains the seed model about 1.4x faster on two
cores than one device does (docs/benchmarks.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn.errors import ConfigError

AXIS = "data"


def nearest_batches(batch_size: int, devices: int) -> tuple[int, ...]:
    """The multiples of `devices` nearest to `batch_size` (one below, one above)."""
    below = batch_size // devices * devices
    return tuple(b for b in (below, below + devices) if b > 0)


def check_divides(batch_size: int, devices: int) -> None:
    if batch_size % devices:
        sizes = " or ".join(map(str, nearest_batches(batch_size, devices)))
        raise ConfigError(f"batch size {batch_size} does not split over {devices} devices; "
                          f"pass --batch-size {sizes}, or --devices with a divisor of {batch_size}")


def cpu_devices_for(batch_size: int, cores: int) -> int:
    """The most CPU devices, at most one per core, that split `batch_size` evenly."""
    return max(d for d in range(1, max(cores, 1) + 1) if batch_size % d == 0)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(devices: int | None, batch_size: int) -> None:
    """Make `devices` XLA CPU devices (default: one per usable core that splits `batch_size`), unless
    the user set a count already (XLA_FLAGS' --xla_force_host_platform_device_count). Has effect only
    before JAX starts its CPU backend; accelerators are not touched."""
    if re.search(r"xla_force_host_platform_device_count", os.environ.get("XLA_FLAGS", "")):
        return
    n = devices or cpu_devices_for(batch_size, usable_cores())
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is up already: keep what it has
        pass


@dataclass(frozen=True)
class Layout:
    """Where training's arrays live: `replicated` (windows, params, optimizer state) and `batched`
    (plans whose last axis is the batch)."""

    mesh: Mesh

    @property
    def devices(self) -> int:
        return self.mesh.size

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def batched(self, ndim: int) -> NamedSharding:
        """Sharding of an array whose last of `ndim` axes is the batch."""
        return NamedSharding(self.mesh, PartitionSpec(*([None] * (ndim - 1)), AXIS))


def layout(devices: int | None, batch_size: int) -> Layout:
    """A mesh over the first `devices` local devices (default: all), checked against the batch size."""
    available = jax.local_devices()
    n = devices or len(available)
    if n > len(available):
        raise ConfigError(f"--devices {n} asks for more devices than the {len(available)} this machine has; "
                          f"pass --devices {len(available)} or fewer")
    check_divides(batch_size, n)
    return Layout(Mesh(np.array(available[:n]), (AXIS,)))
