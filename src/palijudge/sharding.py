"""Device meshes and shardings: data parallel by default, FSDP on request.

One mesh axis, "data", spans every device (of every host, after
`jax.distributed.initialize`). The batch is always split along it. With
FSDP, each parameter (and its optimizer state) is split along its largest
axis that the device count divides; XLA gathers it where it is used. Without
FSDP every parameter is replicated.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(devices=None) -> Mesh:
  return Mesh(np.array(devices if devices is not None else jax.devices()), ("data",))


def _spec(shape: tuple[int, ...], n: int, fsdp: bool) -> P:
  if not fsdp or n == 1:
    return P()
  axes = sorted(range(len(shape)), key=lambda a: -shape[a])
  for a in axes:
    if shape[a] % n == 0 and shape[a] >= n:
      return P(*([None] * a + ["data"]))
  return P()


def tree_shardings(mesh: Mesh, tree, fsdp: bool):
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs)."""
  n = mesh.devices.size
  return jax.tree.map(lambda x: NamedSharding(mesh, _spec(tuple(x.shape), n, fsdp)), tree)


def place(tree, shardings):
  return jax.tree.map(jax.device_put, tree, shardings)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  from palijudge.errors import UserError
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"batch size {batch_size} must be a multiple of the {n} devices")
