"""Data parallelism over every device of every host.

The train steps are written as per-device code (as with `jax.pmap`) and run
under `jax.shard_map` over a one-dimensional mesh whose axis is named
`AXIS` ('data'). Inside a step, `lax.pmean(x, AXIS)` averages over all devices
of all hosts. Parameters are replicated (`P()`), batches split along their
leading dimension (`P(AXIS)`).

Multi-host start-up (`jax.distributed.initialize`) happens in
`initialize_distributed`, which the entry point calls before JAX touches a
device.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from advjax.errors import UserError

AXIS = "data"

_ENV_COORDINATOR = "ADVJAX_COORDINATOR_ADDRESS"
_ENV_NUM_PROCESSES = "ADVJAX_NUM_PROCESSES"
_ENV_PROCESS_ID = "ADVJAX_PROCESS_ID"


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           auto: bool = False) -> bool:
  """Starts multi-host JAX when asked to; returns whether it did.

  Asked by arguments, by the environment variables ADVJAX_COORDINATOR_ADDRESS,
  ADVJAX_NUM_PROCESSES and ADVJAX_PROCESS_ID, or by `auto=True`, which lets
  JAX discover the cluster itself (Cloud TPU pod slices, SLURM, ...). On CPU
  the cross-process collectives use gloo.
  """
  coordinator_address = coordinator_address or os.environ.get(_ENV_COORDINATOR)
  if num_processes is None and os.environ.get(_ENV_NUM_PROCESSES):
    num_processes = int(os.environ[_ENV_NUM_PROCESSES])
  if process_id is None and os.environ.get(_ENV_PROCESS_ID):
    process_id = int(os.environ[_ENV_PROCESS_ID])
  if not coordinator_address and not auto:
    return False
  if coordinator_address and (num_processes is None or process_id is None):
    raise UserError(
        "multi-host start-up needs all of coordinator address, number of "
        "processes and process id (flags --coordinator_address, "
        "--num_processes, --process_id or ADVJAX_* environment variables)")
  platforms = os.environ.get("JAX_PLATFORMS", "") or str(
      jax.config.jax_platforms or "")
  if "cpu" in platforms:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  if coordinator_address:
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes,
                               process_id=process_id)
  else:
    jax.distributed.initialize()
  return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all hosts)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts a pytree of host values (the same on every host) on every device
  of the mesh, including devices of other hosts."""
  sharding = replicated(mesh)
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def put(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key):
      impl = jax.random.key_impl(x)
      data = put(jax.random.key_data(x))
      return jax.random.wrap_key_data(data, impl=impl)
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))
  return jax.tree.map(put, tree)


def shard_batch(host_batch: Any, mesh: Mesh) -> Any:
  """Makes global arrays from this host's part of a batch.

  Each host passes its own slice (leading dimension = global batch / number of
  hosts); the result is one array per leaf, split over all devices.
  """
  sharding = batch_sharding(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
      host_batch)


def data_parallel(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any,
                  donate_argnums: Sequence[int] = ()) -> Callable:
  """jit(shard_map(fn)): runs per-device `fn` on every device of `mesh`."""
  mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs,
                         out_specs=out_specs, check_vma=False)
  return jax.jit(mapped, donate_argnums=tuple(donate_argnums))


def device_rng(rng: jax.Array, step: jax.Array) -> jax.Array:
  """Per-step, per-device key: fold in the step, then the device index.

  Call inside a data-parallel function. Resuming at step s reproduces the key
  of step s exactly, whatever happened before.
  """
  rng = jax.random.fold_in(rng, step)
  return jax.random.fold_in(rng, jax.lax.axis_index(AXIS))
