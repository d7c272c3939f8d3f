"""Every concern's config, in one jax-free module: what the flags fill.

Each frozen dataclass is one concern's settings (which model to load, the
training recipe and its objective, how to judge, the stages around a
recipe, which checkpoints judge), its fields declared with `options.option`
so a flag, its default and its help are written once, here, and each
validates itself in `__post_init__` (a bad value is refused the same way from
the command line, a search trial or a saved record). The modules that use
them (loader, train, losses, evaluate, learn, ensemble) re-export them.

Nothing here imports jax: a script's `--help` builds its parser from these
configs at once, before any heavy import.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Callable, Sequence

from palijudge.evaluation import thresholds
from palijudge.errors import UserError
from palijudge.metrics import DEFAULT_THRESHOLD
from palijudge.options import group, option

DEFAULT_MODEL = "paligemma-3b-pt-224"
DEFAULT_PROMPT = "Is this image appropriate based on Federal Food, Drug, and Cosmetic Act?"
GIF_FRAMES = ("first", "middle", "last")  # data.images: which frame of an animated image
GIF_POLICIES = GIF_FRAMES + ("all",)
GIF_COMBINE = ("min", "mean", "max")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16", "float16")
PARAM_DTYPES = ("auto", "float32", "bfloat16", "float16")
QUANTIZE_MODES = ("none", "int8", "int4", "nf4")
MESH_POLICIES = ("auto", "fsdp", "replicated")
# Named trainable sets: a regex over the flattened parameter paths (params.split).
TRAINABLE = {
    "attn": r"^llm/layers/attn/",
    "llm": r"^llm/",
    "all": r".*",
    "lora": r"^llm/layers/lora/",  # Adapters only (see model/lora.py).
}
OPTIMIZERS = ("sgd", "adam")
MAX_STEPS = 2 ** 31 - 1  # The step counter is an int32 on the device.
REMAT_POLICIES = ("none", "dots", "dots_no_batch", "full")  # model.vit's policies, by name.
LOSSES = ("ce", "yesno", "bce", "focal", "combined")
# Which loss kinds each parameter applies to: giving one to another kind is refused.
APPLIES = {"pos_weight": ("bce", "focal", "combined"), "focal_alpha": ("focal", "combined"),
           "focal_gamma": ("focal", "combined"), "bce_weight": ("combined",),
           "focal_weight": ("combined",)}
EVAL_MODES = ("score", "decode")
SELECT = ("precision", "f1", "accuracy", "recall", "auc")
KEEP = ("best", "all")
CV_METRICS = ("accuracy", "precision", "recall", "f_measure", "auc")  # experiments.cv
COMBINE = ("mean", "min")
COMBINE_HELP = "how several checkpoints' p(yes) combine: mean, or min (the cautious judge)"

# The leaderboard's columns (experiments.leaderboard): metrics, then the settings shown
# by name; the sort keys of 07-report.py.
METRIC_COLUMNS = (("score", "score"), ("precision", "precision"), ("recall", "recall"),
                  ("f_measure", "F1"), ("auc", "AUC"), ("accuracy", "accuracy"))
SETTINGS = (("lr", "lr"), ("steps", "steps"), ("two_stage", "-2"), ("batch", "batch"),
            ("accum", "accum"), ("trainable", "trainable"), ("optimizer", "optimizer"),
            ("loss", "loss"), ("focal_alpha", "alpha"),
            ("focal_gamma", "gamma"), ("bce_weight", "bce_w"), ("focal_weight", "focal_w"),
            ("label_smoothing", "smooth"), ("seed", "seed"))
ALIASES = {"batch": ("batch", "batch_size"), "loss": ("loss.kind", "loss")}
SORT_KEYS = tuple(k for k, _ in METRIC_COLUMNS) + ("name",) + tuple(k for k, _ in SETTINGS)


def parse_mesh(text: str) -> tuple[int, int] | None:
  """`--mesh DATAxFSDP` as (data, fsdp); None for the named policies (auto, fsdp, replicated)."""
  if text in MESH_POLICIES:
    return None
  m = re.fullmatch(r"(\d+)x(\d+)", text)
  if not m or int(m.group(1)) < 1 or int(m.group(2)) < 1:
    raise UserError(f"--mesh wants {', '.join(MESH_POLICIES)} or DATAxFSDP such as 2x4, "
                    f"got {text!r}")
  return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class LoadConfig:
  """Which model to load, and in which dtypes (the `--model` flags)."""
  model: str = option(DEFAULT_MODEL, "preset name (weights from cache/) or checkpoint .npz")
  model_config: str | None = option(None, "model config JSON (for checkpoints without one)")
  tokenizer: str | None = option(None, "sentencepiece model (default: next to the weights)")
  base: str | None = option(None, "base checkpoint of a delta checkpoint (default: as recorded)")
  param_dtype: str = option("auto", "dtype of frozen params (auto: as stored in the checkpoint)",
                            choices=PARAM_DTYPES)
  compute_dtype: str = option("auto", "activation dtype (auto: bfloat16 on GPU, float32 on CPU)",
                              choices=COMPUTE_DTYPES)
  quantize: str | None = option(None, "quantize the frozen matrices when loading (default: as "
                                "the checkpoint records, else none)", choices=QUANTIZE_MODES)
  mesh: str = option("auto", "how parameters lie over the devices: auto (replicated when the "
                     "model fits one device, else FSDP inside each host), fsdp, replicated, "
                     "or DATAxFSDP such as 2x4", metavar="POLICY")

  def __post_init__(self):
    parse_mesh(self.mesh)  # Refuses a malformed --mesh before any work.


def _class_weight_flag(text: str) -> str | tuple[float, float]:
  """`--class-weight`: auto, or two numbers W_YES,W_NO."""
  if text.strip().lower() == "auto":
    return "auto"
  try:
    values = tuple(float(x) for x in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 2:
    raise UserError(f"--class-weight must be auto or W_YES,W_NO (two numbers), got {text!r}")
  return values


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The training objective and its parameters (hashable: static under jit).

  class_weight: (W_YES, W_NO), or "auto" until `resolved` replaces it by the
  inverse class frequencies of the training split.
  """
  kind: str = option("ce", "objective (ce: the colab's)", flag="--loss", choices=LOSSES,
                     sparse=True)
  pos_weight: float = option(1.0, "bce/focal/combined: weight of the yes terms", sparse=True)
  focal_alpha: float = option(1.0, "focal/combined: scale of the focal term, both classes "
                              "alike (1: none)", sparse=True)
  focal_gamma: float = option(3.0, "focal/combined: focusing exponent", sparse=True)
  bce_weight: float = option(0.5, "combined: weight of bce", sparse=True)
  focal_weight: float = option(0.5, "combined: weight of focal", sparse=True)
  label_smoothing: float = option(0.0, "target smoothing eps", sparse=True)
  class_weight: tuple[float, float] | str | None = option(
      None, "per-class loss weights; auto = inverse class frequency of the training split",
      parse=_class_weight_flag, metavar="auto|W_YES,W_NO", sparse=True)

  def __post_init__(self):
    if self.kind not in LOSSES:
      raise UserError(f"--loss must be one of {', '.join(LOSSES)}, got {self.kind!r}")
    if self.class_weight is not None and self.class_weight != "auto":
      cw = tuple(float(w) for w in self.class_weight)
      object.__setattr__(self, "class_weight", cw)
    for msg in _problems(self):
      raise UserError(msg)

  @classmethod
  def from_flags(cls, given: dict) -> LossConfig:
    """From the flags a user gave (even at their defaults): another loss's parameter is refused."""
    kind = given.get("kind", "ce")
    for name in given:
      if name in APPLIES and kind not in APPLIES[name]:
        raise UserError(_misplaced(name, kind))
    return cls(**given)

  def resolved(self, n_yes: int, n_no: int) -> LossConfig:
    """The config with `auto` class weights computed from the training split's counts."""
    if self.class_weight != "auto":
      return self
    return dataclasses.replace(self, class_weight=balanced_class_weight(n_yes, n_no))


def _misplaced(name: str, kind: str) -> str:
  return f"--{name.replace('_', '-')} applies to --loss {'/'.join(APPLIES[name])}, not {kind}"


def _problems(c: LossConfig) -> list[str]:
  """Every invalid value or senseless combination, as user-facing messages."""
  out = []
  finite = all(math.isfinite(v) for v in (c.pos_weight, c.focal_alpha, c.focal_gamma,
                                          c.bce_weight, c.focal_weight, c.label_smoothing))
  if not finite:
    out.append("loss parameters must be finite numbers")
  if not c.pos_weight > 0:
    out.append(f"--pos-weight must be > 0, got {c.pos_weight}")
  default = LossConfig.__dataclass_fields__
  out += [_misplaced(name, c.kind) for name in APPLIES
          if getattr(c, name) != default[name].default and c.kind not in APPLIES[name]]
  if c.pos_weight != 1.0 and c.class_weight is not None:
    out.append("--pos-weight and --class-weight both weight the classes: use one")
  if not c.focal_alpha > 0 or not c.focal_gamma >= 0:
    out.append(f"need --focal-alpha > 0 and --focal-gamma >= 0, got "
               f"{c.focal_alpha}, {c.focal_gamma}")
  if min(c.bce_weight, c.focal_weight) < 0 or c.bce_weight + c.focal_weight <= 0:
    out.append(f"--bce-weight and --focal-weight must be >= 0 and not both 0, got "
               f"{c.bce_weight}, {c.focal_weight}")
  if not 0 <= c.label_smoothing < 1:
    out.append(f"--label-smoothing must be in [0, 1), got {c.label_smoothing}")
  cw = c.class_weight
  if cw is not None and cw != "auto" and (len(cw) != 2 or not all(math.isfinite(w) and w > 0 for w in cw)):
    out.append(f"--class-weight needs two positive numbers W_YES,W_NO, got {cw}")
  return out


def balanced_class_weight(n_yes: int, n_no: int) -> tuple[float, float]:
  """sklearn's "balanced" weights (N / (2 N_yes), N / (2 N_no)); both classes needed."""
  if n_yes <= 0 or n_no <= 0:
    raise UserError(f"--class-weight auto needs both classes in the training split "
                    f"(yes={n_yes}, no={n_no})")
  n = n_yes + n_no
  return (n / (2 * n_yes), n / (2 * n_no))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """One training recipe. Defaults = big_vision's fine-tuning colab (the users' recipe)."""
  lr: float = option(0.03, "peak learning rate (warm-up, then cosine decay to 0)")
  batch_size: int = option(2, "examples per optimizer step (per micro-batch with --accum)",
                           flag="--batch")
  steps: int = option(256, "optimizer steps per stage")
  seed: int = option(0, "seed of the data order, augmentation and LoRA init")
  trainable: str = option("attn", "which parameters train: attn (the colab's), llm, all, lora",
                          choices=tuple(TRAINABLE))
  optimizer: str = option("sgd", "optimizer", choices=OPTIMIZERS)
  warmup_percent: float = option(0.10, "fraction of the steps spent warming up", flag="--warmup")
  loss: LossConfig = group(LossConfig, "objective (see palijudge.losses)")
  print_every: int = option(32, "steps between progress lines")
  accum: int = option(1, "gradient accumulation: effective batch = batch x accum")
  remat: str = option("none", "what the decoder layers keep for the backward pass "
                      "(full: nothing)", choices=REMAT_POLICIES)
  fsdp: bool = option(False, "shard params and optimizer state over each host's devices (FSDP; "
                      "the same as --mesh fsdp)")
  flip: bool = option(False, "augment: random left-right mirror of training images")
  lora_rank: int = option(8, "adapter rank with --trainable lora")
  lora_alpha: float = option(16.0, "adapter scale alpha (the update is alpha/rank * A B)")
  max_restarts: int = option(0, "on divergence, restart with the next seed up to this many times")
  diverge_loss: float = option(1.0, "divergence: the median loss of 32 steps stays above this "
                               "for 32 steps, having been below (0: non-finite losses only)")
  save_every: int = option(0, "write the train state every N steps (for --resume; 0: never)")

  def __post_init__(self):
    def need(ok, msg):
      if not ok:
        raise UserError(f"training config: {msg}")
    need(self.lr > 0 and math.isfinite(self.lr), f"--lr must be > 0, got {self.lr}")
    need(self.batch_size >= 1, f"--batch must be >= 1, got {self.batch_size}")
    need(1 <= self.steps <= MAX_STEPS, f"--steps must be in 1..{MAX_STEPS}, got {self.steps}")
    need(self.trainable in TRAINABLE, f"--trainable must be one of {', '.join(TRAINABLE)}")
    need(self.optimizer in OPTIMIZERS, f"--optimizer must be one of {', '.join(OPTIMIZERS)}")
    need(0 <= self.warmup_percent < 1, "warm-up fraction must be in [0, 1)")
    need(self.print_every >= 1, "print_every must be >= 1")
    need(self.accum >= 1, f"--accum must be >= 1, got {self.accum}")
    need(self.max_restarts >= 0, "--max-restarts must be >= 0")
    need(self.diverge_loss >= 0, "--diverge-loss must be >= 0")
    need(self.save_every >= 0, "--save-every must be >= 0")
    need(self.lora_rank >= 1, "--lora-rank must be >= 1")
    need(self.lora_alpha > 0 and math.isfinite(self.lora_alpha),
         f"--lora-alpha must be a finite number > 0, got {self.lora_alpha}")
    need(self.remat in REMAT_POLICIES, f"--remat must be one of {', '.join(REMAT_POLICIES)}")

  def check_data(self, n_examples: int, name: str) -> None:
    """Refuses, before any work, a step larger than the data: it would only repeat examples
    inside one step, at the memory cost of the whole batch."""
    per_step = self.batch_size * self.accum
    if per_step > n_examples:
      accum = f" x --accum {self.accum}" if self.accum > 1 else ""
      raise UserError(f"{name}: --batch {self.batch_size}{accum} takes {per_step} examples per "
                      f"step, more than its {n_examples}; use at most {n_examples}")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How to judge: the prompt, scoring or decoding, the threshold and its picking.

  `threshold` None means: the one stored with the checkpoint, else 0.5
  (`resolved`). `pick_threshold` chooses it on one evaluated set instead and
  applies it to every set.
  """
  prompt: str = option(DEFAULT_PROMPT, "prompt used where a row's prefix is empty")
  mode: str = option("score", "score: p(yes) from one forward pass; decode: greedy answer",
                     choices=EVAL_MODES)
  eval_batch: int = option(8, "evaluation batch size", short="-b")
  threshold: float | None = option(None, "predict yes when p(yes) >= this (default: the "
                                   "checkpoint's stored threshold, else 0.5)")
  pick_threshold: str | None = option(None, "choose the threshold on this evaluated set (a "
                                      "file, its stem such as valid, or an --eval-set name) "
                                      "and apply it to every set", metavar="SET")
  target: str | None = option(None, "what --pick-threshold aims for: f1, precision=P or "
                              "recall=R (default f1)")
  gif_frame: str = option("first", "which frame of an animated image to judge; all: score "
                          "every frame and combine p(yes) by --gif-combine",
                          choices=GIF_POLICIES)
  gif_frames: int | None = option(None, "with --gif-frame all: K evenly spaced frames "
                                  "(default: every frame)", metavar="K")
  gif_combine: str | None = option(None, "with --gif-frame all: how the frames' p(yes) "
                                   "combine (default mean)", choices=GIF_COMBINE)
  gallery: str | None = option(None, "write an HTML error gallery (FP and FN thumbnails) "
                               "per set to this folder", metavar="DIR")
  gallery_max: int = option(200, "thumbnails per gallery section")
  json: bool = option(False, "also print one JSON line per evaluated set")
  max_new: int = 4  # Decode mode: new tokens (yes/no and eos fit in 4).

  def __post_init__(self):
    for msg in self._problems():
      raise UserError(msg)

  def _problems(self) -> list[str]:
    out = []
    if self.threshold is not None and not 0 < self.threshold < 1:
      out.append(f"--threshold must be in (0, 1), got {self.threshold}")
    if self.threshold is not None and self.pick_threshold:
      out.append("--threshold and --pick-threshold contradict each other: give one")
    if self.mode == "decode":
      for flag in ("threshold", "pick_threshold"):
        if getattr(self, flag) is not None:
          out.append(f"--{flag.replace('_', '-')} needs --mode score (decode predicts from "
                     f"the answer text)")
      if self.gif_frame == "all":
        out.append("--gif-frame all combines p(yes) over frames and needs --mode score")
    if self.target is not None and not self.pick_threshold:
      out.append("--target needs --pick-threshold SET")
    if (self.gif_frames is not None or self.gif_combine is not None) and self.gif_frame != "all":
      out.append("--gif-frames/--gif-combine need --gif-frame all")
    if self.eval_batch < 1:
      out.append("--eval-batch must be >= 1")
    if self.gallery_max < 1:
      out.append("--gallery-max must be >= 1")
    if (self.gif_frames or 0) < 0:
      out.append(f"--gif-frames must be >= 0, got {self.gif_frames}")
    if self.target is not None:
      thresholds.parse_target(self.target)  # Refuses a malformed target now.
    return out

  @property
  def frames(self) -> int:
    return self.gif_frames or 0

  @property
  def combine(self) -> str:
    return self.gif_combine or "mean"

  def resolved(self, stored: float | None = None) -> EvalConfig:
    """`decided` for one model: `stored` is its stored threshold (or None)."""
    return self.decided(() if stored is None else (stored,))

  def decided(self, stored: Sequence[float | None] = (), log: Callable[[str], None] = print
              ) -> EvalConfig:
    """The config with its threshold decided: the one place that decides it.

    In order: --threshold (the flag) wins; --pick-threshold leaves it None (it is picked
    per report on the named set); --mode decode leaves it None (no threshold applies);
    else the models' `stored` thresholds (one per checkpoint, None where none is stored)
    when they all agree; else 0.5, with a warning line when they disagree (an ensemble
    of checkpoints tuned apart). `decision` of an undecided config is 0.5.
    """
    if self.threshold is not None or self.pick_threshold is not None or self.mode != "score":
      return self
    values = list(stored)
    if len(set(values)) > 1:
      shown = ", ".join("none" if v is None else f"{v:g}" for v in values)
      log(f"warning: the checkpoints store different thresholds ({shown}); judging at "
          f"{DEFAULT_THRESHOLD} (give --threshold or --pick-threshold to choose)")
    agreed = values[0] if len(set(values)) == 1 else None
    return dataclasses.replace(self, threshold=DEFAULT_THRESHOLD if agreed is None
                               else float(agreed))

  @property
  def decision(self) -> float:
    return DEFAULT_THRESHOLD if self.threshold is None else self.threshold


@dataclasses.dataclass(frozen=True)
class LearnConfig:
  """What `03-do_learn.py` runs around the recipe: stages, the lottery, what is saved."""
  two_stage: bool = option(False, "second stage at lr/10 (the users' -2)", short="-2")
  runs: int = option(1, "independent runs (seeds S, S+1000, ...); the best by --select is saved")
  select: str = option("f1", "validation metric that picks the best run", choices=SELECT)
  full: bool = option(False, "save every parameter (big_vision-loadable), not a delta over "
                      "the base")
  resume: bool = option(False, "continue from checkpoints/NAME.state.npz if a killed run "
                        "left one")
  keep: str = option("best", "all: also keep every run's checkpoint as NAME.runK.npz "
                     "(K = 1..--runs) beside the best run's NAME.npz, for an ensemble",
                     choices=KEEP)
  probe: bool = option(False, "also fit a linear probe (logistic regression on the frozen "
                       "encoder's pooled image embeddings) on the train split and print its "
                       "Result blocks beside the fine-tune's; with -w saved as NAME.probe.npz")
  probe_only: bool = option(False, "fit and report only the probe (seconds): no model "
                            "evaluation, no training")
  eval_every: int = option(0, "evaluate the valid set every N steps (and at the last) and keep "
                           "the state with the best --select metric, not the last (0: never)")
  patience: int = option(0, "with --eval-every: stop a stage after this many evaluations "
                         "without a better valid metric (0: never stop early)")

  def __post_init__(self):
    if self.runs < 1:
      raise UserError("--runs must be >= 1")
    if self.eval_every < 0 or self.patience < 0:
      raise UserError("--eval-every and --patience must be >= 0")
    if self.patience and not self.eval_every:
      raise UserError("--patience counts evaluations: give --eval-every N too")
    if self.probe_only and self.keep == "all":
      raise UserError("--keep all keeps trained runs; --probe-only trains none")


@dataclasses.dataclass(frozen=True)
class JudgeConfig:
  """Which checkpoints judge: one, several (an ensemble) or a probe file; none: --model."""
  checkpoint: tuple[str, ...] = option((), "checkpoint .npz or probe file (default: the base "
                                       "--model); repeat it or give a comma list to judge with "
                                       "an ensemble", flag="--checkpoint", short="-m",
                                       many=True, metavar="CKPT")
  ensemble: str = option("mean", COMBINE_HELP, choices=COMBINE)

  @property
  def paths(self) -> list[str]:
    """The named checkpoints, comma lists split."""
    return [part.strip() for value in self.checkpoint for part in value.split(",")
            if part.strip()]


# A search (experiments.tune) may fix any of 03-do_learn.py's recipe flags for every
# trial (TrainConfig, LossConfig, LearnConfig), but these, which are not a recipe's.
NOT_FIXABLE = ("seed", "save_every", "resume", "full", "keep", "probe_only")
DEFAULT_STUDY = "palijudge"
# A running trial's worker writes a heartbeat every HEARTBEAT_S; a trial without one for
# GRACE_S is FAIL (its worker is gone) and re-enqueued with its params.
HEARTBEAT_S, GRACE_S = 60, 300


@dataclasses.dataclass(frozen=True)
class StudyConfig:
  """Which search study to read and write, and how its workers watch each other."""
  storage: str | None = option(None, "study database: a file or a URL (default: "
                               "EXPERIMENTS/study.db)", suppress_default=True)
  study: str = option(DEFAULT_STUDY, "study name")
  space: str | None = option(None, "search space YAML (default: built in)",
                             suppress_default=True)
  experiments: str | None = option(None, "where run records go (default: the project's "
                                   "experiments/)", suppress_default=True)
  seed: int | None = option(None, "sampler seed (default: random)")
  heartbeat: int = option(HEARTBEAT_S, "seconds between a running trial's heartbeats")
  grace: int = option(GRACE_S, "seconds without a heartbeat before a trial counts as dead")

  def __post_init__(self):
    for name in ("heartbeat", "grace"):
      if getattr(self, name) < 1:
        raise UserError(f"--{name} must be >= 1, got {getattr(self, name)}")
