"""palijudge.data.examples: reading and writing JSONL/TSV datasets, labels, yes/no parsing."""

from __future__ import annotations

import json
import os

import pytest

from palijudge.data import examples as data
from palijudge.data.examples import Example
from palijudge.errors import UserError


def _dataset(tmp_path, rows, name="data.jsonl", n_images=3):
  """Writes images img/0.png.. (empty files are fine: not decoded here)."""
  (tmp_path / "img").mkdir(exist_ok=True)
  for i in range(n_images):
    (tmp_path / "img" / f"{i}.png").write_bytes(b"x")
  path = tmp_path / name
  text = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows)
  path.write_text(text + "\n", encoding="utf-8")
  return path


def _fake(n_yes: int, n_no: int) -> list[Example]:
  return [Example(image=f"/x/{i}.png", label=i < n_yes, prefix="p",
                  suffix="yes" if i < n_yes else "no", source="d.jsonl",
                  line=i + 1, raw_image=f"{i}.png")
          for i in range(n_yes + n_no)]


def test_read_and_round_trip(tmp_path):
  rows = [{"image": "img/0.png", "prefix": "Is it ok?", "suffix": " Yes "},
          {"image": "img/1.png", "suffix": "no"}]
  path = _dataset(tmp_path, rows)
  exs = data.read_jsonl(path, tmp_path)
  assert [e.label for e in exs] == [True, False]
  assert [e.suffix for e in exs] == ["yes", "no"]
  assert [e.prefix for e in exs] == ["Is it ok?", ""]
  assert exs[0].image == os.path.realpath(tmp_path / "img" / "0.png")
  assert exs[0].raw_image == "img/0.png" and exs[1].line == 2
  assert exs[0].source == str(path)
  out = tmp_path / "new" / "dir" / "train.jsonl"
  data.write_jsonl(out, exs)
  assert json.loads(out.read_text().splitlines()[0]) == {
      "prefix": "Is it ok?", "suffix": "yes", "image": "img/0.png"}
  again = data.read_jsonl(out, tmp_path)
  assert [(e.image, e.label, e.prefix) for e in again] == [
      (e.image, e.label, e.prefix) for e in exs]
  assert [f for f in os.listdir(out.parent)] == ["train.jsonl"]  # no temp


def test_root_defaults_to_file_folder_and_bom(tmp_path):
  path = _dataset(tmp_path, [{"image": "img/0.png", "suffix": "no"}])
  path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
  (ex,) = data.read_jsonl(path)
  assert ex.image == os.path.realpath(tmp_path / "img" / "0.png")


def test_blank_lines_keep_line_numbers(tmp_path):
  path = _dataset(tmp_path, [{"image": "img/0.png", "suffix": "no"}, "",
                             "   ", {"image": "img/1.png", "suffix": "yes"}])
  assert [e.line for e in data.read_jsonl(path, tmp_path)] == [1, 4]


@pytest.mark.parametrize("text,want", [("yes", True), (" Yes ", True),
                                       ("NO\n", False), ("no", False)])
def test_normalize_label(text, want):
  assert data.normalize_label(text, "d.jsonl", 3) is want


@pytest.mark.parametrize("text,want", [("yes", True), (" Yes ", True), ("YES\r\n", True),
                                       ("no", False), ("\tNo", False),
                                       ("yes.", None), ("y", None), ("", None), ("no no", None),
                                       (None, None), (1, None), (True, None)])
def test_parse_yes_no(text, want):
  assert data.parse_yes_no(text) is want


@pytest.mark.parametrize("text", ["OK", "maybe", "", "yes."])
def test_normalize_label_refuses(text):
  with pytest.raises(UserError) as e:
    data.normalize_label(text, "dataset/data.jsonl", 12)
  assert str(e.value) == (f"dataset/data.jsonl:12: unknown label {text!r}"
                          " (expected yes or no)")


def test_bad_label_in_file(tmp_path):
  path = _dataset(tmp_path, [{"image": "img/0.png", "suffix": "yes"},
                             {"image": "img/1.png", "suffix": "OK"}])
  with pytest.raises(UserError) as e:
    data.read_jsonl(path, tmp_path)
  assert str(e.value) == f"{path}:2: unknown label 'OK' (expected yes or no)"


def test_escape_root_refused(tmp_path):
  root = tmp_path / "ds"
  root.mkdir()
  (tmp_path / "secret.png").write_bytes(b"x")
  path = _dataset(root, [{"image": "../secret.png", "suffix": "yes"}])
  with pytest.raises(UserError, match="escapes the dataset root") as e:
    data.read_jsonl(path, root)
  assert str(e.value).startswith(f"{path}:1: ")


def test_absolute_path_ok(tmp_path):
  other = tmp_path / "elsewhere.png"
  other.write_bytes(b"x")
  root = tmp_path / "ds"
  root.mkdir()
  path = _dataset(root, [{"image": str(other), "suffix": "no"}])
  (ex,) = data.read_jsonl(path, root)
  assert ex.image == os.path.realpath(other) and ex.raw_image == str(other)


def test_missing_image_refused(tmp_path):
  path = _dataset(tmp_path, [{"image": "img/0.png", "suffix": "yes"},
                             {"image": "img/nope.png", "suffix": "yes"}])
  with pytest.raises(UserError, match="image not found") as e:
    data.read_jsonl(path, tmp_path)
  assert str(e.value).startswith(f"{path}:2: ") and "img/nope.png" in str(
      e.value)


@pytest.mark.parametrize("line,match", [
    ('{"image": "img/0.png", "suffix": "yes"', "invalid JSON"),
    ('["img/0.png", "yes"]', "expected a JSON object"),
    ('{"suffix": "yes"}', "missing key 'image'"),
    ('{"image": "img/0.png"}', "missing key 'suffix'"),
    ('{"image": 3, "suffix": "yes"}', "'image' must be a string"),
    ('{"image": "img/0.png", "suffix": true}', "'suffix' must be a string"),
    ('{"image": "img/0.png", "suffix": "no", "prefix": null}',
     "'prefix' must be a string"),
])
def test_bad_line_refused_with_line_number(tmp_path, line, match):
  path = _dataset(tmp_path, [{"image": "img/0.png", "suffix": "yes"}, "",
                             line])
  with pytest.raises(UserError, match=match) as e:
    data.read_jsonl(path, tmp_path)
  assert str(e.value).startswith(f"{path}:3: ") and "\n" not in str(e.value)


def test_invalid_utf8_refused(tmp_path):
  (tmp_path / "a.png").write_bytes(b"x")
  path = tmp_path / "d.jsonl"
  path.write_bytes(b'{"image": "a.png", "suffix": "yes"}\n{"image": "\xff"}\n')
  with pytest.raises(UserError, match=r"d\.jsonl:2: not valid UTF-8"):
    data.read_jsonl(path, tmp_path)


def test_empty_and_missing_file_refused(tmp_path):
  path = tmp_path / "empty.jsonl"
  path.write_text("\n  \n")
  with pytest.raises(UserError, match="no examples"):
    data.read_jsonl(path, tmp_path)
  with pytest.raises(UserError, match="not found"):
    data.read_jsonl(tmp_path / "missing.jsonl", tmp_path)


# --- TSV datasets --------------------------------------------------------------

def _tsv(tmp_path, text: str, name="data.tsv"):
  (tmp_path / "img").mkdir(exist_ok=True)
  for i in range(3):
    (tmp_path / "img" / f"{i}.png").write_bytes(b"x")
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


def test_tsv_with_header_round_trip(tmp_path):
  path = _tsv(tmp_path, "id\timage\tlabel\tprefix\tp_yes\n"
                        "a7\timg/0.png\t Yes \tIs it ok?\t0.3\n\n"
                        "b8\timg/1.png\tno\t\t0.9\n")
  exs = data.read_examples(path)
  assert [(e.id, e.label, e.prefix, e.line) for e in exs] == [
      ("a7", True, "Is it ok?", 2), ("b8", False, "", 4)]
  assert exs[0].image == os.path.realpath(tmp_path / "img" / "0.png")
  for out in (tmp_path / "o" / "copy.tsv", tmp_path / "o" / "copy.jsonl"):
    data.write_examples(out, exs)
    again = data.read_examples(out, tmp_path)
    assert [(e.id, e.image, e.label, e.prefix) for e in again] == [
        (e.id, e.image, e.label, e.prefix) for e in exs]
  assert (tmp_path / "o" / "copy.tsv").read_text().splitlines()[0] == "id\timage\tlabel\tprefix"


def test_tsv_headerless_and_suffix_column(tmp_path):
  exs = data.read_tsv(_tsv(tmp_path, "img/0.png\tyes\nimg/1.png\tno\tcustom prompt\n"))
  assert [(e.label, e.prefix, e.key) for e in exs] == [(True, "", "1"),
                                                       (False, "custom prompt", "2")]
  exs = data.read_tsv(_tsv(tmp_path, "suffix\timage\nno\timg/2.png\n", "s.tsv"))
  assert exs[0].label is False and exs[0].raw_image == "img/2.png"


def test_tsv_written_without_a_header_reads_back_row_for_row(tmp_path):
  exs = data.read_tsv(_tsv(tmp_path, "img/0.png\tyes\nimg/1.png\tno\tcustom prompt\n"))
  data.write_tsv(tmp_path / "raw.tsv", exs, header=False)
  lines = (tmp_path / "raw.tsv").read_text().splitlines()
  assert lines == ["img/0.png\tyes", "img/1.png\tno\tcustom prompt"]  # Every line a row.
  again = data.read_tsv(tmp_path / "raw.tsv")
  assert [(e.image, e.label, e.prefix) for e in again] == [(e.image, e.label, e.prefix)
                                                           for e in exs]


@pytest.mark.parametrize("text,match", [
    ("image\tlabel\nimg/0.png\tmaybe\n", r"data\.tsv:2: unknown label 'maybe'"),
    ("image\tlabel\nimg/0.png\n", r"data\.tsv:2: 1 fields, expected 2"),
    ("image\tprefix\nimg/0.png\tp\n", r"data\.tsv: missing column\(s\) label"),
    ("image\tlabel\n", r"data\.tsv: no examples"),
    ("image\tlabel\nimg/9.png\tyes\n", r"data\.tsv:2: image not found"),
])
def test_tsv_bad_input(tmp_path, text, match):
  with pytest.raises(UserError, match=match) as e:
    data.read_examples(_tsv(tmp_path, text))
  assert "\n" not in str(e.value)


def test_unknown_suffix_and_unwritable_value(tmp_path):
  with pytest.raises(UserError, match="expected .jsonl or .tsv"):
    data.read_examples(tmp_path / "data.csv")
  ex = _fake(1, 0)[0]
  bad = Example(**{**ex.__dict__, "prefix": "a\tb"})
  with pytest.raises(UserError, match="tab or a newline"):
    data.write_tsv(tmp_path / "x.tsv", [bad])
  assert not (tmp_path / "x.tsv").exists() and os.listdir(tmp_path) == []


def test_files_without_a_suffix_are_read_by_their_content(tmp_path):
  """Unix `split -l` pieces: xaa (with the TSV header), xab (headerless), a JSONL piece."""
  _dataset(tmp_path, [])
  (tmp_path / "xaa").write_text("image\tlabel\nimg/0.png\tyes\n")
  (tmp_path / "xab").write_text("img/1.png\tno\timg/ prompt\n")
  (tmp_path / "xac").write_text('\ufeff{"image": "img/2.png", "suffix": "yes"}\n')
  got = [data.read_examples(tmp_path / n) for n in ("xaa", "xab", "xac")]
  assert [[(e.raw_image, e.label) for e in g] for g in got] == [
      [("img/0.png", True)], [("img/1.png", False)], [("img/2.png", True)]]
  assert got[1][0].prefix == "img/ prompt"
  (tmp_path / "xad").write_text("just some words\n")
  with pytest.raises(UserError, match="xad: no .jsonl or .tsv suffix.*neither a JSON object"):
    data.read_examples(tmp_path / "xad")
  with pytest.raises(UserError, match="expected .jsonl or .tsv"):  # writing needs a suffix
    data.write_examples(tmp_path / "out", got[0])
