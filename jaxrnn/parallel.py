"""Data parallelism with `jax.sharding`: one code path for 1 device, N devices and N hosts.

A 1-D mesh with a `data` axis over every device of every process; batch plans are sharded along it,
the tokens, parameters and optimizer state replicated, and the train step is jitted with those
shardings; the gradient is a `shard_map` over the `data` axis with one `psum`
(`steps.Steps.grad_sums`). Arrays are placed with `jax.make_array_from_process_local_data`
(`put`): each process hands over only the slice of a batch plan its own devices hold. Several
processes (hosts) join through `jax.distributed.initialize` (`initialize`). On a CPU, the CLI makes
one XLA device per core (`use_cpu_cores`), which trains faster than one device does on several cores
(docs/benchmarks.md has the figure).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxrnn.errors import ConfigError, JaxrnnError, say_once

AXIS = "data"
T = TypeVar("T")


def nearest_batches(batch_size: int, devices: int) -> tuple[int, ...]:
    """The multiples of `devices` nearest to `batch_size` (one below, one above)."""
    below = batch_size // devices * devices
    return tuple(b for b in (below, below + devices) if b > 0)


def check_divides(batch_size: int, devices: int, processes: int = 1) -> None:
    if batch_size % devices:
        sizes = " or ".join(map(str, nearest_batches(batch_size, devices)))
        other = (f"--devices with a divisor of {batch_size}" if processes == 1 else
                 f"processes whose device counts add up to a divisor of {batch_size}")
        raise ConfigError(f"batch size {batch_size} does not split over {devices} devices; "
                          f"pass --batch-size {sizes}, or use {other}")


def cpu_devices_for(batch_size: int, cores: int) -> int:
    """The most CPU devices, at most one per core, that split `batch_size` evenly."""
    return max(d for d in range(1, max(cores, 1) + 1) if batch_size % d == 0)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def use_cpu_cores(devices: int | None, batch_size: int, processes: int = 1) -> None:
    """Make `devices` XLA CPU devices (default: one per usable core, as many as split this process'
    share of `batch_size` among `processes` like ones), unless the user set a count already (XLA_FLAGS'
    --xla_force_host_platform_device_count). Has effect only before JAX starts its CPU backend;
    accelerators are not touched."""
    if re.search(r"xla_force_host_platform_device_count", os.environ.get("XLA_FLAGS", "")):
        return
    share = batch_size // processes if batch_size % processes == 0 else batch_size
    n = devices or cpu_devices_for(share, usable_cores())
    try:
        jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError:  # the backend is up already: keep what it has
        pass


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
               ) -> None:
    """Join a multi-process run with `jax.distributed.initialize`, before any other JAX call. On SLURM,
    Open MPI, Kubernetes and Cloud TPU, JAX finds the coordinator and this process' index itself;
    elsewhere pass all three. CPU processes exchange gradients through gloo unless the environment names
    another implementation (JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi); older JAX releases default to none."""
    if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # no effect on GPUs and TPUs
    try:
        jax.distributed.initialize(coordinator, num_processes, process_id)
    except Exception as e:  # RuntimeError, ValueError, or what a malformed address raises inside JAX
        reason = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot join the distributed run ({reason}); start every process with "
                          "the same --coordinator HOST:PORT and --num-processes and its own --process-id, or "
                          "none of them where JAX finds them itself (SLURM, Open MPI, TPU)") from None


def is_primary() -> bool:
    """Whether this process writes the run directory's files and prints (process 0 of a multi-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches this point (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"jaxrnn:{name}")


def largest_across(value: int) -> int:
    """The largest of every process' `value` (each process must call it at the same point): how processes
    agree, after a chunk, on a signal one of them caught, or on a failure only one of them saw."""
    if jax.process_count() == 1:
        return value
    return int(np.max(multihost_utils.process_allgather(np.int32(value))))


def on_primary(fn: Callable[[], T]) -> T | None:
    """`fn()` on process 0 alone (the run directory's files), every process waiting for it. A JaxrnnError
    there is raised in every process (in the others naming process 0), so that no process waits forever
    for one that has exited."""
    if jax.process_count() == 1:
        return fn()
    failed, result = None, None
    if is_primary():
        try:
            result = fn()
        except JaxrnnError as e:
            failed = e
    if largest_across(failed is not None):
        raise failed or JaxrnnError("process 0 stopped with an error (it printed it); fix what it says, then "
                                    "launch every process again")
    return result


def put(x: np.ndarray | jax.Array, sharding: NamedSharding) -> jax.Array:
    """A host array that every process computes in full, placed as one global array: each process hands
    `jax.make_array_from_process_local_data` only the block its own devices hold (along the batch, its
    slice of the plan; a replicated array whole), so no process sends another's part."""
    x = np.asarray(x)
    blocks = sharding.addressable_devices_indices_map(x.shape).values()
    local = tuple(slice(min(b[d].indices(n)[0] for b in blocks), max(b[d].indices(n)[1] for b in blocks))
                  for d, n in enumerate(x.shape))
    return jax.make_array_from_process_local_data(sharding, x[local], x.shape)


def put_tree(tree: Any, sharding: NamedSharding) -> Any:
    """`put` for every leaf of a pytree."""
    return jax.tree.map(lambda a: put(a, sharding), tree)


def local_copy(tree: Any) -> Any:
    """A pytree of global arrays as arrays on this process' first device, for work one process does alone
    (sampling, evaluating); in a single process the tree as it is."""
    if jax.process_count() == 1:
        return tree
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a), jax.local_devices()[0]), tree)


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
    """A mesh over every device of every process (`devices` None), or over the first `devices` devices
    of this process; checked against the batch size."""
    available = jax.devices() if devices is None else jax.local_devices()
    n = devices or len(available)
    if n > len(available):
        raise ConfigError(f"--devices {n} asks for more devices than the {len(available)} this machine has; "
                          f"pass --devices {len(available)} or fewer")
    check_divides(batch_size, n, jax.process_count() if devices is None else 1)
    if devices is not None and available[0].platform == "cpu" and n > usable_cores():  # as asked by --devices
        say_once(f"jaxrnn: note: training on {n} CPU devices that share this machine's {usable_cores()} cores (one "
                  f"device per core is fastest: --devices {cpu_devices_for(batch_size, usable_cores())})")
    return Layout(Mesh(np.array(available[:n]), (AXIS,)))

