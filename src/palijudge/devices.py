"""What this process runs on, said once, and where a model's parameters go.

- `summary()`: one line, backend, devices, memory and jax version, printed by
  every script that loads a model, before the heavy work (`cli`).
- `cpu_warning(...)`: a full-size model about to run on the CPU is days of
  work for the 3B model; the warning names the expected time and the command
  that installs jax's GPU build (`make setup ACCEL=cuda12`).
- `placement(...)`: the mesh a model's parameters are loaded into, from the
  `--mesh` policy (see `params.mesh_for`) and whether the model fits one
  device (`fits_one_device`, from each device's memory limit).

Nothing here runs at import; every function reads the backend when called.
"""

from __future__ import annotations

import os
import shutil

import jax
from jax.sharding import Mesh

from palijudge import params as params_lib

GiB = 2 ** 30
# An assumed CPU throughput for the warning's estimate (XLA on a desktop CPU, f32).
CPU_FLOPS = 1e11
FULL_SIZE = 5e8  # Parameters above which a model counts as full-size for the warning.
GPU_SETUP = "make setup ACCEL=cuda12"


def device_memory(device) -> int | None:
  """Bytes the allocator may use on `device`; None where not reported (CPU)."""
  try:
    stats = device.memory_stats()
  except Exception:  # noqa: BLE001 - backends without allocator statistics raise.
    stats = None
  value = (stats or {}).get("bytes_limit")
  return int(value) if value else None


def _host_memory() -> int | None:
  try:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return None


def summary() -> str:
  """`device: gpu, 1 x NVIDIA GeForce RTX 4070 (11.6 GiB), jax 0.4.35` and the like."""
  local = jax.local_devices()
  kinds: dict[str, int] = {}
  for d in local:
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  mem = device_memory(local[0])
  if jax.default_backend() == "cpu":
    host = _host_memory()
    where = f"{len(local)} CPU device{'s' if len(local) > 1 else ''}" + (
        f", {host / GiB:.1f} GiB host memory" if host else "")
  else:
    where = ", ".join(f"{n} x {k}" for k, n in kinds.items()) + (
        f" ({mem / GiB:.1f} GiB each)" if mem else "")
  procs = (f", process {jax.process_index()} of {jax.process_count()}"
           if jax.process_count() > 1 else "")
  return f"device: {jax.default_backend()}, {where}{procs}, jax {jax.__version__}"


def gpu_present() -> bool:
  """Whether this machine has an NVIDIA GPU that jax does not use (a driver or nvidia-smi)."""
  return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def cpu_warning(name: str, n_params: int, tokens: int, train_batch: int | None = None,
                steps: int | None = None) -> str | None:
  """A warning line when a full-size model is about to run on the CPU, else None.

  Times are estimates at CPU_FLOPS: a forward pass costs 2 x params x tokens
  FLOPs per image, a training step about three forward passes per example.
  """
  if jax.default_backend() != "cpu" or n_params < FULL_SIZE:
    return None
  per_image = 2 * n_params * tokens / CPU_FLOPS
  parts = [f"about {_duration(per_image)} per evaluated image"]
  if train_batch and steps:
    parts.append(f"{_duration(3 * per_image * train_batch * steps)} for {steps} training "
                 f"steps of batch {train_batch}")
  gpu = " (this machine has an NVIDIA GPU that jax cannot use)" if gpu_present() else ""
  return (f"warning: {name} ({n_params / 1e9:.2f} B parameters) will run on the CPU{gpu}: "
          f"{' and '.join(parts)} (at {CPU_FLOPS / 1e9:.0f} GFLOP/s). For jax's GPU build: "
          f"`{GPU_SETUP}` (docs/training-12gb.md), or the container (bin/docker-run.sh)")


def _duration(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 2 * 3600:
    return f"{seconds / 60:.0f} min"
  if seconds < 2 * 86400:
    return f"{seconds / 3600:.0f} h"
  return f"{seconds / 86400:.1f} days"


def fits_one_device(need_bytes: int, devices=None) -> bool:
  """Whether `need_bytes` fit the smallest of `devices` (with 10 % to spare). CPU: yes."""
  devices = list(devices if devices is not None else jax.local_devices())
  limits = [device_memory(d) for d in devices]
  if not limits or any(m is None for m in limits):
    return True
  return need_bytes <= 0.9 * min(limits)


def training_bytes(frozen_bytes: int, trainable_bytes: int, optimizer: str = "sgd") -> int:
  """A rough need for training: frozen weights, trainable f32 weights, their gradients and
  optimizer slots, and a quarter more for activations (`make plan` computes it exactly)."""
  slots = 2 if optimizer == "adam" else 0
  return int(1.25 * (frozen_bytes + trainable_bytes * (2 + slots)))


def placement(policy: str, need_bytes: int, devices=None) -> Mesh:
  """The mesh for a `--mesh` policy over `devices` (default: this process's)."""
  devices = list(devices if devices is not None else jax.local_devices())
  return params_lib.mesh_for(policy, fits_one_device(need_bytes, devices), devices)
