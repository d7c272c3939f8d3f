"""Parameter trees: paths, trainable sets, dtypes and shardings (the bottom layer).

Every parameter has a slash-joined path as in big_vision's checkpoints
(`llm/layers/attn/q_einsum/w`). A *trainable set* is a regex over those paths
(big_vision's param-path regexes): the leaves it matches are trained in f32,
the others stay frozen in their stored (half) precision. Everything above this
module (model, checkpoint, train) uses these helpers; this module imports
nothing from the project but `errors`.

Shardings: one mesh axis, "data", spans every device (of every host, after
`jax.distributed.initialize`). The batch is always split along it (each
process loads only its rows: see `distributed`). With FSDP,
each parameter (and its optimizer state) is split along its largest axis that
the device count divides; XLA gathers it where it is used. Without FSDP every
parameter is replicated.
"""

from __future__ import annotations

import re
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from palijudge.errors import UserError

Params = dict[str, Any]

# big_vision-style param-path regexes: what each trainable set updates.
TRAINABLE = {
    "attn": r"^llm/layers/attn/",
    "llm": r"^llm/",
    "all": r".*",
    "lora": r"^llm/layers/lora/",  # Adapters only (see model/lora.py).
}
PARAM_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
  n = mesh.devices.size
  if batch_size % n:
    raise UserError(f"batch size {batch_size} must be a multiple of the {n} devices")
