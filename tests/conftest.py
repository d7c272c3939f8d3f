"""Shared session fixtures: one tiny project (model, tokenizer, data, split) for every test.

Building the tiny model and its tokenizer takes seconds; every test module
that needs a model, examples or a project folder uses these instead of
making its own. Tests that change files take `tmp_project`, a fresh copy.
"""

from __future__ import annotations

import shutil

import pytest

from testing import make_tiny_project


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory):
  """files.Project with cache/ (tiny model + tokenizer), dataset/ (24 images) and set1 split.

  Read-only by convention: copy it (`tmp_project`) to change anything.
  """
  return make_tiny_project(tmp_path_factory.mktemp("tiny-project"))


@pytest.fixture
def tmp_project(tiny_project, tmp_path):
  """A private copy of the tiny project (cache, dataset, split)."""
  from palijudge.files import Project
  root = tmp_path / "project"
  shutil.copytree(tiny_project.root, root, ignore=shutil.ignore_patterns(
      "experiments", "checkpoints", "features", "jax-compile"))
  return Project.at(root)


@pytest.fixture(scope="session")
def tiny_lm(tiny_project):
  """The tiny model loaded for the colab's recipe (attention trainable, f32)."""
  from palijudge import loader
  return loader.load(loader.resolve("tiny", cache_dir=str(tiny_project.cache)), trainable="attn")


@pytest.fixture(scope="session")
def tiny_examples(tiny_project):
  """(all, train, valid) examples of the tiny project's dataset and its set1 split."""
  from palijudge.data import examples
  d = tiny_project.dataset
  return (examples.read_jsonl(d / "data.jsonl"),
          examples.read_jsonl(d / "set1" / "train.jsonl", d),
          examples.read_jsonl(d / "set1" / "valid.jsonl", d))
