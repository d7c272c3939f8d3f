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

import contextlib
import os
import socket
import sys
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

from palijudge.errors import UserError

# Environment variables read when the flags leave a setting open (JAX itself
# reads JAX_COORDINATOR_ADDRESS); Slurm and Open MPI need none of them.
ENV_COUNT, ENV_ID = "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"


ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
INIT_TIMEOUT_S = 300  # JAX's own default.
QUIET_S = 3           # A join that takes longer says what it waits for.


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_s: int = 100,
               timeout_s: int = INIT_TIMEOUT_S, log=None) -> None:
  """`jax.distributed.initialize` with the settings given, the environment's, or detected.

  CPU processes talk through gloo (GPUs use NCCL whatever this says). A process
  that stops sending heartbeats for `heartbeat_s` seconds is declared dead and
  the others are stopped with an error instead of waiting for it forever.

  Joining is bounded: the coordinator's HOST:PORT is checked first (and its
  host resolved); a join still waiting after QUIET_S seconds says on stderr
  what it waits for, at which address and for how long; after `timeout_s`
  seconds the process stops with one line and exit status 2 (JAX itself would
  abort with a stack trace, so the line comes from a watchdog that fires
  before JAX's own limit).
  """
  if heartbeat_s < 1:
    raise UserError(f"--heartbeat-timeout must be >= 1 second, got {heartbeat_s}")
  if timeout_s < 1:
    raise UserError(f"--init-timeout must be >= 1 second, got {timeout_s}")
  num_processes = num_processes if num_processes is not None else _env_int(ENV_COUNT)
  process_id = process_id if process_id is not None else _env_int(ENV_ID)
  flag = "--coordinator" if coordinator else ENV_COORDINATOR
  coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
  if coordinator:
    check_address(coordinator, flag)
  if num_processes is not None and num_processes < 1:
    raise UserError(f"--num-processes must be >= 1, got {num_processes}")
  if process_id is not None and (process_id < 0 or num_processes and process_id >= num_processes):
    span = f"0..{num_processes - 1}" if num_processes else ">= 0"
    raise UserError(f"--process-id must be in {span}, got {process_id}")
  if "JAX_CPU_COLLECTIVES_IMPLEMENTATION" not in os.environ:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  what = _waiting_for(coordinator, num_processes, process_id)
  with _watchdog(what, timeout_s, log or (lambda line: print(line, file=sys.stderr, flush=True))):
    try:
      jax.distributed.initialize(coordinator, num_processes, process_id,
                                 initialization_timeout=timeout_s + 30,
                                 heartbeat_timeout_seconds=heartbeat_s)
    except (ValueError, RuntimeError, TypeError, IndexError) as e:
      raise UserError(f"--distributed: {e}") from None


def check_address(address: str, flag: str = "--coordinator") -> tuple[str, int]:
  """(host, port) of HOST:PORT (IPv6 as [::1]:PORT); the host must resolve."""
  host, sep, port = address.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
  if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
    raise UserError(f"{flag} {address!r}: expected HOST:PORT (process 0's address and a free "
                    f"port, e.g. 10.0.0.1:12345)")
  try:
    socket.getaddrinfo(host, int(port))
  except (OSError, UnicodeError) as e:
    raise UserError(f"{flag} {address!r}: cannot resolve the host {host!r} "
                    f"({getattr(e, 'strerror', None) or e})") from None
  return host, int(port)


def _waiting_for(coordinator: str | None, n: int | None, i: int | None) -> tuple[str, str]:
  """('process I of N: ', what it waits for and where), for the watchdog's lines."""
  at = coordinator or "the address JAX detected"
  who = f"process {i} of {n}: " if i is not None and n else ""
  if i == 0:
    return who, f"the other{f' {n - 1}' if n else ''} process(es) to join the coordinator at {at}"
  return who, f"the coordinator (process 0) at {at}"


@contextlib.contextmanager
def _watchdog(what: tuple[str, str], timeout_s: int, log):
  """Says after QUIET_S seconds what a join waits for; stops the process after `timeout_s`."""
  who, whom = what

  def waiting():
    log(f"{who}waiting up to {timeout_s} s (--init-timeout) for {whom}")

  def give_up():
    log(f"error: --distributed: {who}gave up after {timeout_s} s (--init-timeout) waiting for "
        f"{whom}; start every process with the same --coordinator and --num-processes")
    os._exit(2)  # The main thread is inside JAX's join and cannot be interrupted.
  timers = [threading.Timer(min(QUIET_S, timeout_s / 2), waiting),
            threading.Timer(timeout_s, give_up)]
  for t in timers:
    t.daemon = True
    t.start()
  try:
    yield
  finally:
    for t in timers:
      t.cancel()


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
