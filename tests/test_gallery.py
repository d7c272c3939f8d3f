"""palijudge.evaluation.gallery: one self-contained HTML page per evaluated set with errors: FP and FN
sections, most confidently wrong first, thumbnails embedded as JPEG data URIs."""

from __future__ import annotations

import base64
import dataclasses
import io
import re
from pathlib import Path

import numpy as np
from PIL import Image

from palijudge.evaluation import gallery
from palijudge.evaluation.scoring import EvalResult


def _result(examples, p_yes, threshold=0.5) -> EvalResult:
  p = np.asarray(p_yes, np.float32)
  return EvalResult(list(examples), p, p >= threshold, [""] * len(p), 0, threshold)


def _section(page: str, title: str) -> str:
  start = page.index(f"<h2>{title}")
  end = page.find("<h2>", start + 1)
  return page[start:end if end > 0 else len(page)]


def test_gallery_of_a_set_with_errors(tiny_examples, tmp_path):
  exs = tiny_examples[0]
  yes = [e for e in exs if e.label][:3]
  no = [e for e in exs if not e.label][:3]
  # no: 0.9 (FP), 0.7 (FP), 0.1 (TN); yes: 0.2 (FN), 0.4 (FN), 0.8 (TP).
  res = _result(no + yes, [0.9, 0.7, 0.1, 0.2, 0.4, 0.8])
  path = gallery.write(str(tmp_path / "gal"), "dataset/set1/valid.jsonl", "1st trained", res, 200)
  assert path == str(tmp_path / "gal" / "dataset_set1_valid.jsonl_1st_trained.html")
  page = Path(path).read_text(encoding="utf-8")
  assert page.startswith("<!doctype html>") and "Tp=1 Tn=1 Fp=2 Fn=2, threshold 0.5" in page
  fp = _section(page, "False positives (label no, judged yes)")
  fn = _section(page, "False negatives (label yes, judged no)")
  assert fp.startswith("<h2>False positives (label no, judged yes): 2</h2>")
  assert fn.startswith("<h2>False negatives (label yes, judged no): 2</h2>")
  # Most confidently wrong first: FP by p(yes) descending, FN ascending.
  assert re.findall(r"p\(yes\) ([\d.]+)", fp) == ["0.9000", "0.7000"]
  assert re.findall(r"p\(yes\) ([\d.]+)", fn) == ["0.2000", "0.4000"]
  assert [no[0].raw_image, no[1].raw_image] == re.findall(r"<br>(images/[^<]+)<br>", fp)
  assert [yes[0].raw_image, yes[1].raw_image] == re.findall(r"<br>(images/[^<]+)<br>", fn)
  for e in (no[2], yes[2]):  # Correct answers are not shown.
    assert e.raw_image not in page
  uris = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)
  assert len(uris) == 4
  thumb = Image.open(io.BytesIO(base64.b64decode(uris[0])))
  assert thumb.format == "JPEG" and max(thumb.size) == 176


def test_gallery_limit_and_unreadable_images(tiny_examples, tmp_path):
  no = [e for e in tiny_examples[0] if not e.label][:3]
  broken = dataclasses.replace(no[2], image=str(tmp_path / "missing.png"))
  res = _result(no[:2] + [broken], [0.6, 0.95, 0.8])
  page = gallery.render(res, "safe", limit=2)
  fp = _section(page, "False positives")
  assert "<h2>False positives (label no, judged yes): 3</h2>" in fp
  assert "showing the 2 most confident" in fp
  assert re.findall(r"p\(yes\) ([\d.]+)", fp) == ["0.9500", "0.8000"]
  assert "(unreadable)" in fp and fp.count("data:image/jpeg;base64,") == 1
  assert "False negatives (label yes, judged no): 0" in page


def test_audit_page_shows_each_group_leaks_first(tiny_examples, tmp_path):
  from palijudge.data import audit
  rows = tiny_examples[0]
  copy = tmp_path / "copy.png"
  copy.write_bytes(Path(rows[1].image).read_bytes())
  twin = dataclasses.replace(rows[1], image=str(copy), raw_image="copy.png")
  again = dataclasses.replace(rows[0], line=99)  # The same row twice in train.
  found = audit.find({"train": [rows[0], again, rows[1]], "valid": [twin, rows[2]]},
                     audit.AuditConfig(hash_bits=-1))
  path = gallery.write_audit(str(tmp_path / "out" / "audit.html"), found, "Duplicate audit")
  page = Path(path).read_text()
  heads = re.findall(r"<h2>(Group \d+: [^<]*)</h2>", page)
  assert heads == ["Group 2: 2 images, leak across train/valid", "Group 1: 2 images, within train"]
  leak = _section(page, "Group 2")
  assert leak.count("data:image/jpeg;base64,") == 2 and "copy.png" in leak
  assert "#1 train: " in leak and "#2 valid: " in leak and "#1-#2 sha256" in leak
  assert "5 images; 2 group(s) of duplicates holding 4: 1 across sets" in page
  assert "0 possible duplicate pair(s)" in page and "Possible duplicate" not in page


def test_audit_page_shows_possible_duplicates_with_the_lines_that_decide_them(tmp_path):
  from palijudge.data import audit, examples, templated
  truth = templated.make_benchmark(tmp_path, seed=0, templates=1, ads_per_template=2,
                                   per_kind=0)
  a, b = examples.read_jsonl(truth.data)
  found = audit.find({"train": [a], "valid": [b]}, audit.AuditConfig(possible=1.0))
  assert len(found.possible) == 1  # Two ads on one template: at most possible.
  page = gallery.render_audit(found, "Duplicate audit")
  assert "<h2>Possible duplicate 1: across train/valid</h2>" in page
  assert (f"<pre>confirm\t{a.raw_image}\t{b.raw_image}\ndismiss\t{a.raw_image}\t"
          f"{b.raw_image}</pre>") in page
  assert _section(page, "Possible duplicate 1").count("data:image/jpeg;base64,") == 2
