"""Random full-size checkpoints (Kaggle layout, streamed) and the phase timer."""

from __future__ import annotations

import json
import pathlib
import tracemalloc

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from palijudge import checkpoint
from palijudge.errors import UserError
from palijudge.model import config as config_lib
from palijudge.model import paligemma as model_lib
from palijudge.params import flatten
from palijudge import phases as phases_lib
from palijudge.tools import fullsize

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
_BIG_MLP = dict(image_size=224,
                img=dict(patch_size=14, width=16, depth=1, mlp_dim=16, num_heads=1),
                llm=dict(vocab_size=512, width=512, depth=2, mlp_dim=16384, num_heads=2,
                         num_kv_heads=1, head_dim=64))


def _read(path) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as npz:
    return {k: npz[k] for k in npz.files}


def test_tiny_checkpoint_has_the_models_keys_shapes_and_float16(tmp_path):
  cfg = config_lib.preset("tiny")
  path = tmp_path / fullsize.default_filename("tiny")
  summary = fullsize.write_random_checkpoint(str(path), cfg, seed=3, meta={"model": "tiny"})
  shapes = flatten(model_lib.param_shapes(cfg))
  arrays = _read(path)
  params = {k[len("params/"):]: v for k, v in arrays.items() if k.startswith("params/")}
  assert set(arrays) - {"params/" + k for k in shapes} == {checkpoint.META_KEY}
  assert set(params) == set(shapes)
  for name, sd in shapes.items():
    assert params[name].shape == tuple(sd.shape), name
    assert params[name].dtype == np.float16, name
  assert summary["params"] == sum(int(np.prod(s.shape)) for s in shapes.values())
  meta = checkpoint.read_meta(path)
  assert meta["random_weights"] is True and meta["seed"] == 3 and meta["model"] == "tiny"
  loaded = checkpoint.load_params(path, model_lib.param_shapes(cfg), lambda _: None)
  assert {k: v.shape for k, v in flatten(loaded).items()} == \
      {k: tuple(v.shape) for k, v in shapes.items()}


def test_values_are_a_sane_init_and_the_forward_pass_stays_finite(tmp_path):
  cfg = config_lib.preset("tiny")
  path = tmp_path / "tiny.f16.npz"
  fullsize.write_random_checkpoint(str(path), cfg, seed=0)
  params = checkpoint.load_params(path, model_lib.param_shapes(cfg), lambda _: np.float32)
  flat = flatten(params)
  assert np.all(flat["img/embedding/bias"] == 0)
  assert np.all(flat["img/Transformer/encoder_norm/scale"] == 1)  # LayerNorm gain 1.
  assert np.all(flat["llm/final_norm/scale"] == 0)  # RMSNorm stores gain - 1.
  emb = flat["llm/embedder/input_embedding"]
  assert abs(float(emb.std()) - fullsize.INIT_STD) < 0.002 and abs(float(emb.mean())) < 0.002
  rng = np.random.default_rng(0)
  image = jnp.asarray(rng.uniform(-1, 1, (2, 224, 224, 3)), jnp.float32)
  text = jnp.asarray(rng.integers(3, cfg.llm.vocab_size, (2, 8)), jnp.int32)
  logits = model_lib.build(cfg).apply({"params": params}, image, text, jnp.zeros_like(text))
  assert logits.shape == (2, 8, cfg.llm.vocab_size)
  assert np.all(np.isfinite(np.asarray(logits)))


def test_values_are_seeded_per_array_and_chunking_changes_nothing():
  entry = fullsize.Entry("params/llm/layers/mlp/linear", (3, 50, 7), np.dtype(np.float16))
  a = fullsize.random_array(entry, seed=5)
  assert np.array_equal(a, fullsize.random_array(entry, seed=5, chunk=11))
  assert not np.array_equal(a, fullsize.random_array(entry, seed=6))
  other = fullsize.Entry("params/llm/layers/mlp/gating", entry.shape, entry.dtype)
  assert not np.array_equal(a, fullsize.random_array(other, seed=5))
  bf16 = fullsize.Entry(entry.key, entry.shape, fullsize.dtype_of("bfloat16"))
  assert fullsize.random_array(bf16, seed=5).dtype == ml_dtypes.bfloat16


def test_writer_holds_one_array_at_a_time(tmp_path, monkeypatch):
  # Two large neighbours (MLP gating, 64 MiB, then linear, 32 MiB) and little else.
  cfg = config_lib.from_dict(_BIG_MLP)
  planned = list(fullsize.entries(cfg))
  largest = max(e.nbytes for e in planned)
  monkeypatch.setattr(fullsize, "CHUNK", 1024)  # Negligible generation temporaries.
  checkpoint.write_npz(tmp_path / "warm.npz", fullsize.random_arrays(planned[:1], 0))
  tracemalloc.start()
  try:
    checkpoint.write_npz(tmp_path / "big.npz", fullsize.random_arrays(planned, 0))
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  # The array being written and numpy's 16 MiB serialisation buffer, nothing more:
  # keeping the previous array while making the next would add the 32 MiB one.
  assert peak < largest + 18 * 2 ** 20, (peak, largest)
  with np.load(tmp_path / "big.npz") as npz:
    assert set(npz.files) == {e.key + "" for e in planned}
    assert npz["params/llm/layers/mlp/linear"].shape == (2, 16384, 512)


def test_full_size_dry_run_matches_the_3b_parameter_count():
  planned = list(fullsize.entries(config_lib.preset("paligemma-3b-pt-224")))
  assert sum(e.size for e in planned) == 2_923_335_408
  assert sum(e.nbytes for e in planned) == 5_846_670_816  # The 5.85 GB Kaggle file.
  assert all(e.key.startswith("params/") and e.dtype == np.float16 for e in planned)
  want = {}
  for line in (FIXTURES / "param_shapes_3b.txt").read_text().splitlines():
    if line and not line.startswith("#"):
      name, shape = line.split("\t")[:2]
      want["params/" + name] = tuple(json.loads(shape.replace("(", "[").replace(")", "]")
                                                .replace(",]", "]")))
  assert {e.key: e.shape for e in planned} == want
  assert fullsize.default_filename("paligemma-3b-pt-224") == "paligemma-3b-pt-224.f16.npz"


def test_user_errors_are_one_line(tmp_path, monkeypatch):
  with pytest.raises(UserError, match="--dtype"):
    fullsize.dtype_of("int8")
  monkeypatch.setattr(fullsize.shutil, "disk_usage", lambda _: type("U", (), {"free": 10})())
  path = tmp_path / "tiny.f16.npz"
  with pytest.raises(UserError, match="GB free"):
    fullsize.write_random_checkpoint(str(path), config_lib.preset("tiny"))
  assert not path.exists()


class _Clock:
  def __init__(self, steps):
    self.steps, self.now = list(steps), 0.0

  def __call__(self):
    self.now += self.steps.pop(0) if self.steps else 0.0
    return self.now


def test_phases_record_in_order_with_peaks_and_render():
  peaks = iter([100, 100, 100, 500, 500, 500, 500])
  phases = phases_lib.Phases(clock=_Clock([0, 2, 0, 30, 0, 5]), peak=lambda: next(peaks))
  with phases("checkpoint_load"):
    pass
  with phases("compilation"):
    pass
  phases.add("training", 12.5, peak_before=400)
  with pytest.raises(ValueError):
    with phases("save"):
      raise ValueError("disk full")
  names = [r.name for r in phases.records]
  assert names == ["checkpoint_load", "compilation", "training", "save"]
  assert [r.seconds for r in phases.records] == [2.0, 30.0, 12.5, 5.0]
  assert [r.new_peak for r in phases.records] == [False, True, True, False]
  assert [r.ok for r in phases.records] == [True, True, True, False]
  line = json.loads(phases.json_line(model="tiny"))
  assert line["model"] == "tiny" and line["total_s"] == 49.5
  assert [p["name"] for p in line["phases"]] == names
  assert line["phases"][1]["peak_bytes"] == 500
  table = phases.table().splitlines()
  assert table[0].startswith("| phase | seconds |")
  assert [row.split("|")[1].strip() for row in table[2:6]] == \
      ["checkpoint_load", "compilation", "training", "save (failed)"]
  assert "| total | 49.50 |" in phases.table()


def test_phases_do_not_nest_and_work_without_memory_statistics():
  phases = phases_lib.Phases(peak=lambda: None)
  with phases("training"):
    with pytest.raises(RuntimeError, match="inside"):
      with phases("save"):
        pass
  assert [r.name for r in phases.records] == ["training"]
  assert phases.records[0].peak_bytes is None and phases.records[0].new_peak is None
  assert "n/a" in phases.table()
  if jax.default_backend() == "cpu":
    assert phases_lib.device_peak_bytes() is None  # No allocator statistics there.
