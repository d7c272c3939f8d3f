"""devices.py: the device line, the CPU warning, whether a model fits one device."""

from __future__ import annotations

import io
import re
import sys

import jax
import pytest

from palijudge import cli, devices
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib
from palijudge import params as params_lib


def test_summary_names_backend_devices_memory_and_jax():
  line = devices.summary()
  assert line.startswith(f"device: {jax.default_backend()}, ")
  assert f"jax {jax.__version__}" in line
  assert re.search(r"\d+ CPU devices?, [\d.]+ GiB host memory", line)


def test_cpu_warning_for_the_full_size_model_names_time_and_fix():
  """docs/training-12gb.md's example: the 3B model, 256 image tokens + 32 text, batch 2, 256 steps."""
  n = params_lib.count(model_lib.param_shapes(config_lib.preset("paligemma-3b-pt-224")))
  assert n == 2_923_335_408
  line = devices.cpu_warning("paligemma-3b-pt-224", n, 256 + 32, 2, 256)
  assert line.startswith("warning: paligemma-3b-pt-224 (2.92 B parameters) will run on the CPU")
  assert "about 17 s per evaluated image and 7 h for 256 training steps of batch 2" in line
  assert "`make setup ACCEL=cuda12` (docs/training-12gb.md)" in line
  # Evaluation only: no training estimate. A tiny model: no warning at all.
  assert "training steps" not in devices.cpu_warning("m", n, 288)
  assert devices.cpu_warning("tiny", 10_000_000, 288, 2, 256) is None


def test_cpu_warning_says_when_a_gpu_sits_unused(monkeypatch):
  monkeypatch.setattr(devices, "gpu_present", lambda: True)
  assert "NVIDIA GPU that jax cannot use" in devices.cpu_warning("m", 3e9, 288)


class _Device:
  def __init__(self, limit):
    self.limit = limit

  def memory_stats(self):
    return {"bytes_limit": self.limit} if self.limit else None


def test_fits_one_device_uses_the_smallest_memory_limit():
  gib = 2 ** 30
  assert devices.fits_one_device(10 * gib, [_Device(12 * gib), _Device(24 * gib)])
  assert not devices.fits_one_device(11 * gib, [_Device(12 * gib), _Device(24 * gib)])
  assert devices.fits_one_device(10 ** 15, [_Device(None)])  # CPU: no limit reported.


def test_announce_is_quiet_for_a_small_model_in_a_pipe(tiny_lm, monkeypatch):
  err = io.StringIO()
  monkeypatch.setattr(sys, "stderr", err)
  cli.announce(tiny_lm)
  assert err.getvalue() == ""  # Tests and the demo keep stderr for errors.

  class Tty(io.StringIO):
    def isatty(self):
      return True
  tty = Tty()
  monkeypatch.setattr(sys, "stderr", tty)
  cli.announce(tiny_lm)
  assert tty.getvalue().startswith("device: ") and "warning" not in tty.getvalue()


@pytest.mark.parametrize("seconds, want", [(1.0, "1 s"), (600, "10 min"), (3 * 3600, "3 h"),
                                       (3 * 86400, "3.0 days")])
def test_durations_read_naturally(seconds, want):
  assert devices._duration(seconds) == want
