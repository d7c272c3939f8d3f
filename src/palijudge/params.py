"""Parameter trees: paths, trainable sets, dtypes and shardings (the bottom layer).

Every parameter has a slash-joined path as in big_vision's checkpoints
(`llm/layers/attn/q_einsum/w`). A *trainable set* is a regex over those paths
(big_vision's param-path regexes): the leaves it matches are trained in f32,
the others stay frozen in their stored (half) precision. Everything above this
module (model, checkpoint, train) uses these helpers; this module imports
nothing from the project but `errors`.

Shardings: a 2-D mesh, axes ("data", "fsdp"), over every device (of every
host, after `jax.distributed.initialize`), its devices ordered by process so
that each process holds one contiguous block of every batch. The batch is
split over both axes (each process loads only its rows: see `distributed`).
Parameters (and their optimizer state) are split along "fsdp" over their
largest axis that its size divides, and replicated along "data": a mesh of
shape (hosts, devices per host) keeps FSDP's gathers inside each host, and
(devices, 1) is plain data parallelism. Leaves are placed straight into their
sharding from host memory (`put`): each device receives only its slice.
"""

from __future__ import annotations

import collections
import math
import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from palijudge.errors import UserError
from palijudge.configs import PARAM_DTYPES, TRAINABLE, parse_mesh  # noqa: F401

Params = dict[str, Any]

# big_vision-style param-path regexes (configs.TRAINABLE): what each trainable set updates.


def flatten(params: Params) -> dict[str, Any]:
  return traverse_util.flatten_dict(params, sep="/")


def unflatten(flat: dict[str, Any]) -> Params:
  return traverse_util.unflatten_dict(flat, sep="/")


def trainable_pattern(trainable: str) -> re.Pattern:
  """The regex of a named trainable set (or `trainable` itself, a regex)."""
  return re.compile(TRAINABLE.get(trainable, trainable))


def trains_encoder(trainable: str) -> bool:
  """Whether the trainable set touches the vision encoder (no feature cache then)."""
  return bool(trainable_pattern(trainable).search("img/embedding/kernel"))


def saves_everything(trainable: str) -> bool:
  """A set that trains every leaf: its checkpoint is a full one, never a delta."""
  return TRAINABLE.get(trainable) == ".*"


def split(params: Params, trainable: str) -> tuple[Params, Params]:
  """(trainable, frozen) nested trees with disjoint leaves."""
  pattern = trainable_pattern(trainable)
  flat = flatten(params)
  train = {k: v for k, v in flat.items() if pattern.search(k)}
  if not train:
    raise UserError(f"trainable set {trainable!r} matches no parameter")
  frozen = {k: v for k, v in flat.items() if k not in train}
  return unflatten(train), unflatten(frozen)


def merge(a: Params, b: Params) -> Params:
  """One tree with the leaves of both (b wins on a shared path)."""
  return unflatten({**flatten(a), **flatten(b)})


def dtype_rule(trainable: str, param_dtype: str = "auto") -> Callable[[str], Any]:
  """name -> dtype when loading: trainable leaves f32, frozen ones `param_dtype`.

  `auto` keeps a frozen leaf's stored dtype (None), so a half-precision
  checkpoint is never widened on the host.
  """
  if param_dtype not in PARAM_DTYPES:
    raise UserError(f"--param-dtype must be one of {', '.join(PARAM_DTYPES)}")
  pattern = trainable_pattern(trainable)
  frozen = None if param_dtype == "auto" else np.dtype(jnp.dtype(param_dtype))
  return lambda name: np.float32 if pattern.search(name) else frozen


def count(tree) -> int:
  """Number of scalars in a tree of arrays or ShapeDtypeStructs."""
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def nbytes(tree) -> int:
  """Bytes of a tree of arrays or ShapeDtypeStructs as a device holds them (4-bit types packed)."""
  return sum(-(-int(np.prod(x.shape)) * jax.dtypes.itemsize_bits(x.dtype) // 8)
             for x in jax.tree.leaves(tree))


# --- Shardings ---------------------------------------------------------------

AXES = ("data", "fsdp")
BATCH = P(AXES)  # Rows split over every device of the mesh.


def make_mesh(devices=None, fsdp: int = 1) -> Mesh:
  """A (data, fsdp) mesh: `fsdp` devices share each parameter, len(devices) / fsdp such groups.

  Devices are ordered by (process, id), so a row of the mesh never mixes hosts
  unless `fsdp` exceeds the devices of one host.
  """
  devices = list(devices if devices is not None else jax.devices())
  devices.sort(key=lambda d: (d.process_index, d.id))
  if fsdp < 1 or len(devices) % fsdp:
    raise UserError(f"an FSDP group of {fsdp} devices does not divide the {len(devices)} devices")
  return Mesh(np.array(devices).reshape(len(devices) // fsdp, fsdp), AXES)


def mesh_for(policy: str, fits_one_device: bool, devices=None) -> Mesh:
  """The mesh a `--mesh` value asks for, over `devices` (default: every process's).

  auto: replicated when the model fits one device, else FSDP inside each host;
  fsdp: FSDP inside each host (groups of each process's local devices), data
  parallel across hosts; replicated: data parallel only; DxF: that shape.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = parse_mesh(policy)
  if shape is not None:
    if shape[0] * shape[1] != len(devices):
      raise UserError(f"--mesh {policy} needs {shape[0] * shape[1]} devices, "
                      f"this run has {len(devices)}")
    return make_mesh(devices, shape[1])
  if policy == "replicated" or (policy == "auto" and fits_one_device):
    return make_mesh(devices, 1)
  per_host = min(collections.Counter(d.process_index for d in devices).values())
  return make_mesh(devices, math.gcd(per_host, len(devices)))


def _spec(shape: tuple[int, ...], n: int) -> P:
  if n == 1:
    return P()
  axes = sorted(range(len(shape)), key=lambda a: -shape[a])
  for a in axes:
    if shape[a] % n == 0 and shape[a] >= n:
      return P(*([None] * a + ["fsdp"]))
  return P()


def tree_shardings(mesh: Mesh, tree):
  """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs): split along "fsdp"."""
  return jax.tree.map(lambda x: leaf_sharding(mesh, x.shape), tree)


def leaf_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
  return NamedSharding(mesh, _spec(tuple(shape), mesh.shape["fsdp"]))


def put(a: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array placed into `sharding`: each device (of this process) gets only its slice.

  Works with several processes too: each passes the same whole value and
  places the slices of its own devices.
  """
  return jax.make_array_from_callback(a.shape, sharding, lambda index: a[index])


def place(tree, shardings):
  """Every leaf in its sharding; a leaf already there is kept as it is (no copy)."""
  def one(x, sh):
    if not isinstance(x, jax.Array):
      return put(np.asarray(x), sh)
    if x.sharding.is_equivalent_to(sh, x.ndim):
      return x
    if x.is_fully_addressable and not sh.is_fully_addressable:
      return put(np.asarray(x), sh)  # This process's copy into a mesh that spans processes.
    return jax.device_put(x, sh)
  return jax.tree.map(one, tree, shardings)


def mesh_of(tree) -> Mesh | None:
  """The mesh a placed tree lives on (that of its first NamedSharding leaf), or None."""
  for x in jax.tree.leaves(tree):
    sh = getattr(x, "sharding", None)
    if isinstance(sh, NamedSharding):
      return sh.mesh
  return None


def shard_rows(tree, mesh: Mesh | None):
  """A batch (host arrays, rows first) split over every device of `mesh`.

  Rows are padded (the last one repeated) up to a multiple of the device
  count; callers read the first rows of the outputs. No mesh, or one device:
  unchanged.
  """
  if mesh is None or mesh.devices.size == 1:
    return tree
  n, sharding = mesh.devices.size, NamedSharding(mesh, BATCH)

  def one(x):
    if x is None or np.ndim(x) == 0:
      return x
    x = np.asarray(x)
    pad = -len(x) % n
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return jax.device_put(x, sharding)
  return jax.tree.map(one, tree)


def device_bytes(tree) -> dict[str, int]:
  """Bytes each device holds of a placed tree (its shards), by device name."""
  out: dict[str, int] = collections.defaultdict(int)
  for x in jax.tree.leaves(tree):
    for shard in getattr(x, "addressable_shards", ()):
      out[str(shard.device)] += shard.data.nbytes
  return dict(out)


def check_batch(batch_size: int, mesh: Mesh) -> None:
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"batch size {batch_size} must be a multiple of the {n} devices")
