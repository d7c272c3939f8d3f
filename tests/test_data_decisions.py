"""palijudge.data.decisions: the user's confirm/dismiss file, read by the audit and the splits."""

from __future__ import annotations

import os

import pytest

from palijudge.data import decisions
from palijudge.errors import UserError


def _touch(root, *names):
  for n in names:
    (root / n).parent.mkdir(parents=True, exist_ok=True)
    (root / n).write_bytes(n.encode())


def test_read_resolves_images_against_the_root_and_a_later_line_wins(tmp_path):
  _touch(tmp_path, "img/a.png", "img/b.png", "img/c.png")
  path = tmp_path / "d.tsv"
  path.write_text("# decision\timage\timage\tnote\n\n"
                  "confirm\timg/a.png\timg/b.png\n"
                  f"dismiss\timg/b.png\t{tmp_path / 'img/c.png'}\tsame template\n"
                  "dismiss\timg/b.png\timg/a.png\n")
  d = decisions.read(path, tmp_path)
  assert len(d) == 2 and d.path == str(path)
  a, b, c = (str(tmp_path / f"img/{x}.png") for x in "abc")
  assert d.of(a, b) == d.of(b, a) == "dismiss"  # The later line about the pair.
  assert d.of(c, b) == "dismiss" and d.of(a, c) is None


def test_among_maps_decisions_to_the_first_item_of_each_content(tmp_path):
  _touch(tmp_path, "a.png", "b.png", "elsewhere.png")
  d = decisions.Decisions({frozenset((str(tmp_path / "a.png"), str(tmp_path / "b.png"))):
                           "confirm",
                           frozenset((str(tmp_path / "a.png"),
                                      str(tmp_path / "elsewhere.png"))): "dismiss"})
  paths = [str(tmp_path / n) for n in ("x.png", "b.png", "a.png", "b.png")]
  # Item 3 shows b again, item 2 is a copy of item 0's content.
  assert d.among(paths, [0, 1, 0, 1]) == {(0, 1): "confirm"}
  assert d.among(paths[:2], [0, 1]) == {}
  assert decisions.NONE.among(paths, [0, 1, 2, 3]) == {}


def test_bad_lines_name_the_file_and_line(tmp_path):
  path = tmp_path / "d.tsv"
  for text in ("keep\ta.png\tb.png\n", "confirm\ta.png\n", "confirm a.png\n",
               "dismiss\t\tb.png\n"):
    path.write_text("# fine\n" + text)
    with pytest.raises(UserError, match=rf"^{path}:2: expected 'confirm' or 'dismiss', a tab"):
      decisions.read(path, tmp_path)
  path.write_text("confirm\ta.png\t./a.png\n")
  with pytest.raises(UserError, match=rf"^{path}:1: both images are 'a.png'"):
    decisions.read(path, tmp_path)
  with pytest.raises(UserError, match="file not found"):
    decisions.read(tmp_path / "none.tsv", tmp_path)


def test_spaces_do_when_no_path_holds_one(tmp_path):
  _touch(tmp_path, "a.png", "b.png")
  path = tmp_path / "d.tsv"
  path.write_text("dismiss  a.png   b.png  copied from the page\n")
  d = decisions.read(path, tmp_path)
  assert d.of(str(tmp_path / "a.png"), str(tmp_path / "b.png")) == "dismiss"


def test_the_suggested_line_reads_back(tmp_path):
  _touch(tmp_path, "a b.png", "c.png")
  path = tmp_path / "d.tsv"
  path.write_text(decisions.line("confirm", "a b.png", "c.png") + "\n")
  d = decisions.read(path, tmp_path)
  assert d.of(os.path.join(tmp_path, "a b.png"), os.path.join(tmp_path, "c.png")) == "confirm"
