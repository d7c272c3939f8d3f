"""palijudge.data.splits: train/valid splits, class counts and cross-validation folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palijudge.data import splits
from palijudge.data.examples import Example
from palijudge.errors import UserError


def _fake(n_yes: int, n_no: int) -> list[Example]:
  return [Example(image=f"/x/{i}.png", label=i < n_yes, prefix="p",
                  suffix="yes" if i < n_yes else "no", source="data.jsonl",
                  line=i + 1, raw_image=f"img/{i}.png")
          for i in range(n_yes + n_no)]


def test_split_deterministic_and_sized():
  exs = _fake(20, 20)
  train, valid = splits.split(exs, 10, seed=1)
  assert len(train) == 30 and len(valid) == 10
  assert splits.split(exs, 10, seed=1) == (train, valid)
  assert splits.split(exs, 10, seed=2) != (train, valid)
  assert train != exs[:30]  # shuffled


def test_split_stratified_ratio():
  exs = _fake(30, 70)
  for seed in range(5):
    train, valid = splits.split(exs, 10, seed=seed, stratify=True)
    assert splits.class_counts(valid) == {"yes": 3, "no": 7}
    assert splits.class_counts(train) == {"yes": 27, "no": 63}
  _, valid = splits.split(_fake(1, 2), 2, seed=0, stratify=True)
  assert splits.class_counts(valid) == {"yes": 1, "no": 1}  # 2/3 -> 1, 4/3 -> 1


@pytest.mark.parametrize("n_valid", [40, 50, 0, -1])
def test_split_bad_n_valid(n_valid):
  with pytest.raises(UserError) as e:
    splits.split(_fake(20, 20), n_valid, seed=0, data_path="dataset/data.jsonl")
  if n_valid >= 40:
    assert str(e.value) == (f"-v {n_valid} is not smaller than the 40 examples"
                            " in dataset/data.jsonl")


def test_class_counts():
  assert splits.class_counts(_fake(2, 5)) == {"yes": 2, "no": 5}
  assert splits.class_counts([]) == {"yes": 0, "no": 0}


@settings(max_examples=60, deadline=None)
@given(n_yes=st.integers(0, 30), n_no=st.integers(0, 30),
       frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1),
       stratify=st.booleans())
def test_split_property(n_yes, n_no, frac, seed, stratify):
  exs = _fake(n_yes, n_no)
  n = len(exs)
  if n < 2:
    return
  n_valid = 1 + int(frac * (n - 2))
  train, valid = splits.split(exs, n_valid, seed, stratify=stratify)
  assert len(valid) == n_valid and len(train) == n - n_valid
  lines = [e.line for e in train + valid]
  assert sorted(lines) == list(range(1, n + 1))  # union = all, disjoint
  if stratify:
    share = n_valid * n_yes / n
    assert abs(splits.class_counts(valid)["yes"] - share) < 1


# Cross-validation folds ------------------------------------------------------

@pytest.mark.parametrize("stratify", [False, True])
def test_folds_partition_and_balance(tmp_path, stratify):
  ex = _fake(13, 7)
  pairs = splits.write_folds(ex, 3, seed=5, stratify=stratify, out_dir=tmp_path / "cv3")
  assert pairs == splits.fold_paths(tmp_path / "cv3")
  valids = [[json.loads(l)["image"] for l in v.read_text().splitlines()] for _, v in pairs]
  trains = [[json.loads(l)["image"] for l in t.read_text().splitlines()] for t, _ in pairs]
  # Each example once in a valid split.
  assert sorted(i for v in valids for i in v) == sorted(e.raw_image for e in ex)
  for t, v in zip(trains, valids):
    assert not set(t) & set(v) and len(t) + len(v) == 20
  assert sorted(len(v) for v in valids) == [6, 7, 7]
  if stratify:
    yes = [sum(int(i.split("/")[1][:-4]) < 13 for i in v) for v in valids]
    assert max(yes) - min(yes) <= 1
  again = splits.write_folds(ex, 3, seed=5, stratify=stratify, out_dir=tmp_path / "again")
  assert [v.read_text() for _, v in again] == [v.read_text() for _, v in pairs]
  manifest = json.loads((tmp_path / "cv3" / "folds.json").read_text())
  assert manifest["k"] == 3 and manifest["seed"] == 5 and manifest["stratify"] == stratify


def test_folds_refused(tmp_path):
  with pytest.raises(UserError, match="--folds 1 must be at least 2"):
    splits.write_folds(_fake(3, 3), 1, 0, False, tmp_path)
  with pytest.raises(UserError, match="--folds 7 is more than the 6 examples"):
    splits.write_folds(_fake(3, 3), 7, 0, False, tmp_path)
  with pytest.raises(UserError, match="folds.json: no fold splits here"):
    splits.fold_paths(tmp_path / "none")


# Groups of duplicates ----------------------------------------------------------

def _reference_split(exs, n_valid, seed, stratify):
  """The split as it was before groups (the files users already have come from it)."""
  order = np.random.default_rng(seed).permutation(len(exs))
  if not stratify:
    return [exs[i] for i in order[n_valid:]], [exs[i] for i in order[:n_valid]]
  labels = np.array([e.label for e in exs], dtype=bool)
  quota = splits._valid_quota(labels, n_valid)
  train, valid = [], []
  for i in order:
    c = bool(labels[i])
    if quota[c] > 0:
      quota[c] -= 1
      valid.append(exs[i])
    else:
      train.append(exs[i])
  return train, valid


def _reference_folds(labels, k, seed, stratify):
  order = np.random.default_rng(seed).permutation(len(labels))
  if stratify:
    y = np.asarray(labels, bool)[order]
    order = np.concatenate([order[y], order[~y]])
  folds = np.empty(len(labels), np.int64)
  folds[order] = np.arange(len(labels)) % k
  return folds


@settings(max_examples=80, deadline=None)
@given(n_yes=st.integers(0, 25), n_no=st.integers(0, 25), frac=st.floats(0, 1),
       seed=st.integers(0, 2**32 - 1), stratify=st.booleans(), k=st.integers(2, 6))
def test_without_duplicates_nothing_changes(n_yes, n_no, frac, seed, stratify, k):
  exs = _fake(n_yes, n_no)
  n = len(exs)
  if n < max(2, k):
    return
  n_valid = 1 + int(frac * (n - 2))
  alone = list(range(n, 0, -1))  # Every example its own group.
  expected = _reference_split(exs, n_valid, seed, stratify)
  assert splits.split(exs, n_valid, seed, stratify) == expected
  assert splits.split(exs, n_valid, seed, stratify, groups=alone) == expected
  labels = [e.label for e in exs]
  folds = _reference_folds(labels, k, seed, stratify)
  assert (splits.assign_folds(labels, k, seed, stratify) == folds).all()
  assert (splits.assign_folds(labels, k, seed, stratify, groups=alone) == folds).all()


def _planted_groups(n: int, seed: int) -> np.ndarray:
  """Group ids with a few groups of 2-4 (copies of one ad) among single examples."""
  rng = np.random.default_rng(seed)
  ids = np.arange(n)
  for g in range(n // 6):
    members = rng.choice(n, size=int(rng.integers(2, 5)), replace=False)
    ids[members] = ids[members[0]]
  return ids


@settings(max_examples=60, deadline=None)
@given(n_yes=st.integers(4, 30), n_no=st.integers(4, 30), seed=st.integers(0, 2**32 - 1),
       stratify=st.booleans())
def test_split_keeps_each_group_on_one_side(n_yes, n_no, seed, stratify):
  exs = _fake(n_yes, n_no)
  groups = _planted_groups(len(exs), seed)
  n_valid = max(5, len(exs) // 5)
  train, valid = splits.split(exs, n_valid, seed, stratify, groups=groups)
  side = {e.line: "valid" for e in valid} | {e.line: "train" for e in train}
  assert sorted(side) == list(range(1, len(exs) + 1))
  for g in set(groups.tolist()):
    assert len({side[i + 1] for i in np.flatnonzero(groups == g)}) == 1, g
  assert 0 < len(valid) <= n_valid
  if stratify:  # Never more of a class than its share allows.
    quota = splits._valid_quota(np.array([e.label for e in exs]), n_valid)
    assert splits.class_counts(valid)["yes"] <= quota[True]
    assert splits.class_counts(valid)["no"] <= quota[False]


def test_planted_leak_stays_in_train_or_valid():
  exs = _fake(10, 10)
  groups = np.arange(20)
  groups[[3, 17]] = 3  # Example 3 and 17 are one ad.
  for seed in range(20):
    _, valid = splits.split(exs, 5, seed, stratify=True, groups=groups)
    lines = {e.line for e in valid}
    assert (4 in lines) == (18 in lines)
  with pytest.raises(UserError, match="every group of duplicates"):
    splits.split(_fake(2, 2), 1, 0, groups=[0, 0, 1, 1])


@pytest.mark.parametrize("stratify", [False, True])
def test_folds_keep_each_group_in_one_fold(tmp_path, stratify):
  exs = _fake(24, 16)
  groups = _planted_groups(40, 5)
  pairs = splits.write_folds(exs, 4, seed=2, stratify=stratify, out_dir=tmp_path, groups=groups)
  fold_of = {}
  for f, (tr, va) in enumerate(pairs):
    for line in va.read_text().splitlines():
      fold_of[json.loads(line)["image"]] = f
  assert sorted(fold_of) == sorted(e.raw_image for e in exs)  # Each once in a valid file.
  for g in set(groups.tolist()):
    assert len({fold_of[exs[i].raw_image] for i in np.flatnonzero(groups == g)}) == 1
  sizes = np.bincount(list(fold_of.values()), minlength=4)
  assert sizes.max() - sizes.min() <= 3  # Groups of up to 4 still leave the folds even.
  with pytest.raises(UserError, match="--folds 3 is more than the 2 groups"):
    splits.write_folds(_fake(2, 2), 3, 0, False, tmp_path / "x", groups=[0, 0, 1, 1])


def test_templated_ads_edits_stay_with_their_original_and_lookalikes_are_free(tmp_path):
  """The audit's groups on templated ads: every edited copy (flipped, cropped, recoloured, ...)
  in its original's fold and side; ads on one template are not tied to each other."""
  from palijudge.data import audit, examples, templated
  truth = templated.make_benchmark(tmp_path / "ads", seed=6, templates=4, ads_per_template=3,
                                   per_kind=1)
  rows = examples.read_jsonl(truth.data)
  groups = audit.find({"ads": rows}).group_ids()
  folds = splits.assign_folds([e.label for e in rows], 3, seed=0, stratify=True, groups=groups)
  train, valid = splits.split(rows, 6, seed=0, groups=groups)
  side = {e.raw_image: s for s, part in (("train", train), ("valid", valid)) for e in part}
  for i, r in enumerate(truth.rows):
    if r.edit:
      assert folds[i] == folds[r.ad] and side[r.image] == side[truth.rows[r.ad].image], r.edit
  lookalikes = [(i, j) for i in range(12) for j in range(i + 1, 12) if truth.same_template(i, j)]
  assert any(folds[i] != folds[j] for i, j in lookalikes)
  assert len(set(groups.tolist())) == len(rows) - len(templated.EDITS)  # One group per edit.


# --- Records: a split says where its images are ---------------------------------------------

def _layout(tmp_path):
  """A project's dataset/ with images in dataset/demo/images and outside it in pics/."""
  dataset = tmp_path / "dataset"
  for folder in (dataset / "demo" / "images", tmp_path / "pics", dataset / "set1"):
    folder.mkdir(parents=True)
  return dataset


def test_a_split_records_its_root_relative_inside_dataset_absolute_outside(tmp_path):
  dataset = _layout(tmp_path)
  splits.write_record(dataset / "set1", dataset / "demo", dataset / "demo" / "data.jsonl", 7,
                      train=3, valid=1)
  record = json.loads((dataset / "set1" / splits.RECORD).read_text())
  assert record == {"root": "../demo", "data": "../demo/data.jsonl", "seed": 7, "train": 3,
                    "valid": 1}
  assert splits.recorded_root(dataset / "set1") == str((dataset / "demo").resolve())
  splits.write_record(dataset / "set1", tmp_path / "pics", tmp_path / "d.jsonl", 7)
  record = json.loads((dataset / "set1" / splits.RECORD).read_text())
  assert record["root"] == str((tmp_path / "pics").resolve())
  # The whole project moved: a root inside dataset/ moves with it.
  splits.write_record(dataset / "set1", dataset / "demo", dataset / "demo" / "data.jsonl", 7)
  moved = tmp_path / "moved"
  moved.mkdir()
  (tmp_path / "dataset").rename(moved / "dataset")
  assert splits.recorded_root(moved / "dataset" / "set1") == str(
      (moved / "dataset" / "demo").resolve())


def test_root_of_is_the_one_rule(tmp_path):
  dataset = _layout(tmp_path)
  (dataset / "cv5" / "fold-2").mkdir(parents=True)
  splits.write_record(dataset / "cv5", dataset / "demo", dataset / "demo" / "data.jsonl", 1)
  demo = str((dataset / "demo").resolve())
  assert splits.root_of(dataset / "cv5" / "fold-2" / "train.jsonl", dataset) == demo  # A fold.
  assert splits.root_of(dataset / "cv5", dataset) == demo                            # The folder.
  legacy = dataset / "set1" / "train.jsonl"  # No record: the original layout, dataset/.
  assert splits.root_of(legacy, dataset) == str(dataset.resolve())
  assert splits.root_of(dataset / "demo" / "data.jsonl", dataset) == str(dataset.resolve())
  assert splits.root_of(tmp_path / "pics" / "x.tsv", dataset) == str((tmp_path / "pics").resolve())


@pytest.mark.parametrize("text, says", [("{", "unreadable split record"),
                                        ('{"root": 3}', "unreadable split record"),
                                        ('{"root": "../gone"}', "which is no folder now")])
def test_a_bad_record_is_one_line(tmp_path, text, says):
  dataset = _layout(tmp_path)
  (dataset / "set1" / splits.RECORD).write_text(text)
  with pytest.raises(UserError, match=says) as e:
    splits.root_of(dataset / "set1" / "valid.jsonl", dataset)
  assert "set1/split.json" in str(e.value)
