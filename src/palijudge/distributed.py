"""Several processes, one run (`jax.distributed`): shares, gathering, one writer.

In a multi-process run every process runs the same program in the same order;
each drives its own devices, and together they form one mesh
(`params.make_mesh` spans `jax.devices()`, every process's). This module is
the one home of what that implies:

- Shares. Of every global training batch a process loads only the rows its
  devices hold (`batch_rows`); the global batch is assembled from the
  processes' parts (`global_batch`). An evaluation set is cut into contiguous
  blocks, one per process (`block`), and the scores are gathered back in
  order (`gather`, `gather_texts`), so every process holds the whole set's
  result and the Result blocks are computed once over all of it.
- Host copies. A tree split over several processes (FSDP) is gathered whole
  (`host`, `local`). These are collectives: every process calls them at the
  same point, also those that then write nothing.
- One writer. Only process 0 writes files and prints (`is_main`; the scripts
  silence the others' stdout, see `cli`).

With one process every function is the identity or the whole set, so a
single-process run computes exactly what it did before.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from palijudge.errors import UserError

# Environment variables read when the flags leave a setting open (JAX itself
# reads JAX_COORDINATOR_ADDRESS); Slurm and Open MPI need none of them.
ENV_COUNT, ENV_ID = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_s: int = 100) -> None:
  """`jax.distributed.initialize` with the settings given, the environment's, or detected.

  CPU processes talk through gloo (GPUs use NCCL whatever this says). A process
  that stops sending heartbeats for `heartbeat_s` seconds is declared dead and
  the others are stopped with an error instead of waiting for it forever.
  """
  if heartbeat_s < 1:
    raise UserError(f"--heartbeat-timeout must be >= 1 second, got {heartbeat_s}")
  num_processes = num_processes if num_processes is not None else _env_int(ENV_COUNT)
  process_id = process_id if process_id is not None else _env_int(ENV_ID)
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_s)
  except (ValueError, RuntimeError, TypeError) as e:
    raise UserError(f"--distributed: {e}") from None


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise UserError(f"--distributed: {name}={value!r} is not an integer") from None


def active() -> bool:
  """Whether this run has several processes."""
  return jax.process_count() > 1


def is_main() -> bool:
  """Process 0: the one that writes files and prints."""
  return jax.process_index() == 0


def batch_rows(sharding: jax.sharding.Sharding, rows: int) -> slice:
  """This process's rows of a global batch of `rows` split by `sharding` on its first axis."""
  spans = {idx[0].indices(rows)[:2]
           for idx in sharding.addressable_devices_indices_map((rows,)).values()}
  start, stop = min(s for s, _ in spans), max(e for _, e in spans)
  if sum(e - s for s, e in spans) != stop - start:  # Devices in an order that interleaves hosts.
    raise UserError(f"this process's devices hold rows {sorted(spans)} of the batch, not one "
                    f"contiguous block; order the mesh's devices by process")
  return slice(start, stop)


def global_batch(local, sharding: jax.sharding.Sharding, rows: int):
  """The global batch (jax.Arrays) from every process's `batch_rows` of it (numpy)."""
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
      sharding, x, (rows, *x.shape[1:])), local)


def _block_size(n: int) -> int:
  return -(-n // jax.process_count())


def block(n: int) -> slice:
  """This process's contiguous block of a set of `n` items (the last blocks may be short or empty)."""
  k, i = _block_size(n), jax.process_index()
  return slice(min(i * k, n), min((i + 1) * k, n))


def gather(values: np.ndarray, n: int) -> np.ndarray:
  """Every process's `block` of a length-`n` array, concatenated in order (a collective)."""
  values = np.asarray(values)
  if not active():
    return values
  k = _block_size(n)
  padded = np.zeros((k, *values.shape[1:]), values.dtype)
  padded[:len(values)] = values
  every = np.asarray(multihost_utils.process_allgather(padded))
  return every.reshape(-1, *values.shape[1:])[:n]


def gather_texts(texts: list[str], n: int) -> list[str]:
  """`gather` for strings (decoded answers), sent as UTF-8 bytes."""
  if not active():
    return list(texts)
  raw = [t.encode("utf-8") for t in texts]
  lengths = gather(np.array([len(r) for r in raw], np.int32), n)
  width = max(1, int(lengths.max(initial=0)))
  buf = np.zeros((len(raw), width), np.uint8)
  for i, r in enumerate(raw):
    buf[i, :len(r)] = np.frombuffer(r, np.uint8)
  every = gather(buf, n)
  return [bytes(row[:m]).decode("utf-8") for row, m in zip(every, lengths)]


def host(tree):
  """A numpy copy of every leaf; leaves split over processes are gathered (a collective)."""
  if not active():
    return jax.device_get(tree)
  return jax.tree.map(lambda x: np.asarray(_whole(x)), tree)


def local(tree):
  """This process's own copy of a tree, for work on its devices alone (evaluation).

  Unchanged with one process. With several, a leaf laid over a (hosts,
  devices per host) mesh becomes the same leaf over this host's row of the
  mesh, built from the shards this process already holds (no copy, still
  sharded over its devices); a leaf whose shards lie partly on other hosts
  (an explicit --mesh whose FSDP groups cross hosts) is gathered.
  """
  if not active():
    return tree
  return jax.tree.map(_whole, tree)


def _whole(x):
  """x itself if this process holds all of it, its local view, or the gathered whole."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return x
  view = _local_view(x)
  if view is not None:
    return view
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _local_view(x: jax.Array) -> jax.Array | None:
  """x over the mesh rows of this process, when those rows hold every element of x."""
  sharding = x.sharding
  if not isinstance(sharding, jax.sharding.NamedSharding):
    return None
  mesh, me = sharding.mesh, jax.process_index()
  grid = mesh.devices.reshape(mesh.devices.shape[0], -1)
  rows = [r for r in range(grid.shape[0]) if all(d.process_index == me for d in grid[r])]
  if not rows or mesh.axis_names[0] in _axes_of(sharding.spec):
    return None  # Split along the first axis, which runs across hosts.
  mine = mesh.devices[rows]
  if {d for d in mine.flat} != {s.device for s in x.addressable_shards}:
    return None
  local_mesh = jax.sharding.Mesh(mine, mesh.axis_names)
  shards = [s.data for s in x.addressable_shards]
  return jax.make_array_from_single_device_arrays(
      x.shape, jax.sharding.NamedSharding(local_mesh, sharding.spec), shards)


def _axes_of(spec) -> set[str]:
  out = set()
  for entry in spec:
    if entry is None:
      continue
    out |= set(entry) if isinstance(entry, tuple) else {entry}
  return out
