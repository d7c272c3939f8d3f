"""A linear probe: the baseline that takes seconds.

Logistic regression (scikit-learn) on each image's pooled embedding from the
frozen vision encoder (`FeatureCache.pooled`: its image tokens averaged). The
classes are weighted ('balanced'), since an 85 % `yes` set otherwise teaches
"always yes"; the regularisation C is chosen by stratified inner
cross-validation on the training examples, scored by log-loss because p(yes)
feeds thresholds and AUC, not only the 0.5 cut. Fewer than 2 examples of a
class leave nothing to cross-validate: C is then fixed at 1 (and said so).

The probe judges through the same `EvalResult` as a fine-tuned model (mode
score, p(yes) per example), so Result blocks, --threshold/--pick-threshold,
intervals, prediction files and galleries apply unchanged. It reads the
image only: the prompt plays no part.

File (`save`/`load`): an .npz written by the checkpoint writer, no pickle:
`params/probe/coef` (D,) and `params/probe/intercept` (1,) in float64, on the
raw pooled embedding (the standardisation is folded in), and `palijudge/meta`
with kind "linear-probe", C, the inner-CV folds, the threshold, and the model
the encoder belongs to: its weights' sha256 (`weights_id`), config, and file
(+ base of a delta). Loading checks every field; applying checks the model.
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings
from typing import Callable, Sequence

import jax
import numpy as np
from scipy.special import expit

from palijudge import checkpoint
from palijudge import files
from palijudge.data.examples import Example
from palijudge.model.features import FeatureCache
from palijudge.data.images import GIF_FRAMES
from palijudge.errors import UserError, where
from palijudge.configs import EvalConfig
from palijudge.evaluation.scoring import EvalResult, Scorer
from palijudge.evaluation.reports import report
from palijudge.loader import LoadedModel, encoder_cache

Log = Callable[[str], None]
KIND = "linear-probe"
C_GRID = tuple(float(c) for c in np.logspace(-3, 3, 7))  # Factors of 10.
MAX_FOLDS = 5
SUFFIX = ".probe.npz"  # 03-do_learn.py --probe -w NAME writes checkpoints/NAME.probe.npz.


@dataclasses.dataclass(frozen=True)
class Probe:
  """A fitted probe: p(yes) = sigmoid(x @ coef + intercept) on a pooled embedding x."""
  coef: np.ndarray          # (D,) float64
  intercept: float
  C: float                  # The chosen inverse regularisation strength.
  folds: int                # Inner-CV folds that chose C (0: too few examples, C fixed).
  weights_id: str           # The encoder's model as loaded (loader.LoadedModel.weights_id).
  model_config: dict        # That model's config (ModelConfig.to_dict()).
  encoder: str              # That model's weights file (a delta's own file) ...
  base: str | None = None   # ... and its base, for a delta.
  gif_frame: str = "first"  # The frame the training images were embedded from.
  n_train: int = 0
  threshold: float | None = None
  source: str = ""          # The file it was loaded from ("" if fitted here).

  def p_yes(self, x_NxD: np.ndarray) -> np.ndarray:
    """(N,) float32 p(yes) of pooled embeddings."""
    z = np.asarray(x_NxD, np.float64) @ self.coef + self.intercept
    return expit(z).astype(np.float32)

  def describe(self) -> str:
    cv = f"{self.folds}-fold inner CV" if self.folds else "C fixed: too few examples for CV"
    return (f"linear probe: logistic regression on {self.coef.shape[0]}-d frozen image "
            f"embeddings, {self.n_train} training examples, C={self.C:g} ({cv})")


# --- Fitting ---------------------------------------------------------------------


def fit_arrays(x_NxD: np.ndarray, y_N: np.ndarray, seed: int = 0
               ) -> tuple[np.ndarray, float, float, int]:
  """(coef (D,), intercept, C, folds) of a class-weighted logistic regression.

  C is picked from C_GRID by stratified k-fold CV (k = min(5, the rarer
  class's count)); the standardisation is folded into coef/intercept.
  """
  from sklearn.linear_model import LogisticRegression
  from sklearn.model_selection import GridSearchCV, StratifiedKFold
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  y = np.asarray(y_N, bool)
  n_yes, n_no = int(y.sum()), int((~y).sum())
  if not n_yes or not n_no:
    raise UserError(f"the probe needs yes and no training examples, got yes={n_yes}, "
                    f"no={n_no}")
  x = np.asarray(x_NxD, np.float64)
  folds = min(MAX_FOLDS, n_yes, n_no)
  pipe = make_pipeline(StandardScaler(),
                       LogisticRegression(C=1.0, class_weight="balanced", max_iter=10_000))
  with warnings.catch_warnings():  # Separable data: lbfgs may warn about large weights.
    warnings.simplefilter("ignore")
    if folds >= 2:
      cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
      search = GridSearchCV(pipe, {"logisticregression__C": list(C_GRID)}, cv=cv,
                            scoring="neg_log_loss")
      pipe = search.fit(x, y).best_estimator_
    else:
      folds = 0
      pipe.fit(x, y)
  scaler, clf = pipe.named_steps["standardscaler"], pipe.named_steps["logisticregression"]
  w = clf.coef_[0] / scaler.scale_
  return w, float(clf.intercept_[0] - w @ scaler.mean_), float(clf.C), folds


def fit(lm: LoadedModel, features: FeatureCache, train: Sequence[Example], gif_frame: str,
        eval_batch: int = 8, seed: int = 0) -> Probe:
  """A probe on `train`'s pooled embeddings from `lm`'s frozen encoder (`features`)."""
  x = features.pooled(list(train), lm.cfg.image_size, eval_batch)
  coef, intercept, c, folds = fit_arrays(x, np.array([e.label for e in train], bool), seed)
  return Probe(coef, intercept, c, folds, lm.weights_id, lm.cfg.to_dict(),
               os.path.abspath(lm.spec.weights),
               os.path.abspath(lm.spec.base) if lm.spec.base else None,
               "first" if gif_frame == "all" else gif_frame, len(train))


def encoder_features(lm: LoadedModel, gif_frame: str) -> FeatureCache:
  """The feature cache of `lm`'s encoder, whatever --trainable says: the probe never trains it."""
  return encoder_cache(lm, "first" if gif_frame == "all" else gif_frame)


# --- Judging -----------------------------------------------------------------------


def check_config(ecfg: EvalConfig, what: str = "a probe") -> None:
  """Refuses settings a probe cannot follow (it has p(yes) of one frame, no text)."""
  if ecfg.mode != "score":
    raise UserError(f"{what} gives p(yes) only: --mode decode needs a fine-tuned model")
  if ecfg.gif_frame == "all":
    raise UserError(f"{what} embeds one frame per image: --gif-frame all needs a "
                    f"fine-tuned model (use first, middle or last)")


def probe_config(ecfg: EvalConfig) -> EvalConfig:
  """`ecfg` as a probe can follow it beside a fine-tune: score mode, one frame."""
  if ecfg.mode == "score" and ecfg.gif_frame != "all":
    return ecfg
  return dataclasses.replace(ecfg, mode="score", gif_frame="first", gif_frames=None,
                             gif_combine=None).resolved()


def scorer(probe: Probe, features: FeatureCache) -> Scorer:
  """An `scoring.Scorer`: the probe's p(yes), `eval_batch` examples at a time."""
  size = features.model.cfg.image_size

  def scores(examples, ecfg: EvalConfig, cache=None, _features=None):
    check_config(ecfg)
    bs = ecfg.eval_batch
    for start in range(0, len(examples), bs):
      chunk = list(examples[start:start + bs])
      yield chunk, probe.p_yes(features.pooled(chunk, size, bs)), [""] * len(chunk)
  return scores


def check_model(probe: Probe, lm: LoadedModel) -> None:
  """The probe reads `lm`'s encoder only if it was fitted on it (same weights' sha256)."""
  name = where(probe.source) if probe.source else "the probe"
  if probe.weights_id != lm.weights_id or probe.model_config != lm.cfg.to_dict():
    raise UserError(f"{name}: fitted on the encoder of {probe.encoder}, not of "
                    f"{lm.spec.weights} (weights differ); pass --model with the model it was "
                    f"fitted on")


def fit_and_report(lm: LoadedModel, train: Sequence[Example], sets: dict, ecfg: EvalConfig,
                   features: FeatureCache | None = None, log: Log = print, seed: int = 0,
                   strict: bool = True) -> tuple[Probe, dict[str, EvalResult]]:
  """Fits on `train`, then prints a Result block per set, tagged "probe" (see reports.report).

  The probe's threshold is the one the results were judged at (picked, if
  --pick-threshold asked).
  """
  ecfg = probe_config(ecfg)
  features = features or encoder_features(lm, ecfg.gif_frame)
  probe = fit(lm, features, train, ecfg.gif_frame, ecfg.eval_batch, seed)
  log(probe.describe())
  results = report(lm, sets, ecfg, "probe", log, strict=strict,
                   scorer=scorer(probe, features))
  threshold = float(next(iter(results.values())).threshold)
  return dataclasses.replace(probe, threshold=threshold), results


# --- The file -------------------------------------------------------------------------


def save(path: str, probe: Probe) -> None:
  """The probe file (see the module docstring), written atomically."""
  meta = {"kind": KIND, "C": probe.C, "folds": probe.folds, "weights_id": probe.weights_id,
          "model_config": probe.model_config, "encoder": probe.encoder, "base": probe.base,
          "gif_frame": probe.gif_frame, "n_train": probe.n_train, "threshold": probe.threshold,
          "dim": int(probe.coef.shape[0])}
  params = {"probe": {"coef": np.asarray(probe.coef, np.float64),
                      "intercept": np.array([probe.intercept], np.float64)}}
  checkpoint.save(path, params, None, meta)


def is_probe(path) -> bool:
  """Whether `path` is a probe file (by its content, not its name)."""
  p = os.fspath(path)
  return p.endswith(".npz") and os.path.isfile(p) and checkpoint.read_meta(p).get("kind") == KIND


def _field(meta: dict, key: str, kind, path, ok=lambda v: True):
  value = meta.get(key)
  if isinstance(value, bool) and kind is not bool or not isinstance(value, kind) or not ok(value):
    raise UserError(f"{where(path)}: probe file has a bad {key!r} ({value!r:.60})")
  return value


def load(path) -> Probe:
  """The probe in `path`; a damaged or hostile file is one UserError naming it."""
  files.note_input(path, "the probe file")
  meta = checkpoint.read_meta(path)
  if meta.get("kind") != KIND:
    raise UserError(f"{where(path)}: not a probe file (its meta has no kind {KIND!r})")
  dim = _field(meta, "dim", int, path, lambda v: 0 < v <= 1 << 20)
  finite = lambda v: math.isfinite(v)
  c = _field(meta, "C", (int, float), path, lambda v: finite(v) and v > 0)
  threshold = meta.get("threshold")
  if threshold is not None:
    _field(meta, "threshold", (int, float), path, lambda v: 0 < v < 1)
  shapes = {"probe": {"coef": jax.ShapeDtypeStruct((dim,), np.float64),
                      "intercept": jax.ShapeDtypeStruct((1,), np.float64)}}
  try:
    arrays = checkpoint.load_params(path, shapes, dtype_for=lambda _: np.float64)["probe"]
  except (TypeError, ValueError) as e:  # e.g. text arrays that do not convert to floats.
    raise UserError(f"{where(path)}: unreadable probe weights ({e})") from None
  coef, intercept = np.asarray(arrays["coef"]), float(arrays["intercept"][0])
  if not (np.isfinite(coef).all() and math.isfinite(intercept)):
    raise UserError(f"{where(path)}: probe weights are not finite numbers")
  base = meta.get("base")
  if base is not None:
    _field(meta, "base", str, path)
  return Probe(coef, intercept, float(c), _field(meta, "folds", int, path, lambda v: v >= 0),
               _field(meta, "weights_id", str, path, bool),
               _field(meta, "model_config", dict, path), _field(meta, "encoder", str, path, bool),
               base, _field(meta, "gif_frame", str, path, lambda v: v in GIF_FRAMES),
               _field(meta, "n_train", int, path, lambda v: v >= 0),
               None if threshold is None else float(threshold), os.fspath(path))
