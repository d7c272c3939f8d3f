"""palijudge.data.audit_bench: the audit scored on templated ads, before and after."""

from __future__ import annotations

import numpy as np

from palijudge.data import audit_bench, examples, templated


def test_scores_add_up_and_the_table_shows_them():
  s = audit_bench.run([3], templates=3, ads_per_template=3, per_kind=1)
  assert s.images == 3 * 3 + len(templated.EDITS)
  assert list(s.edits) == list(templated.EDITS)
  for kind, n in s.edits.items():
    assert n.planted == 1 and n.duplicate + n.possible <= 1, kind
    assert n.duplicate == 1, kind  # Every planted edit is caught.
  assert s.edits["copy"].before == 1 and s.edits["flip"].before == 0  # The former audit.
  same_ad = s.pairs["after"][2]  # Edit-original pairs, and pairs of two edits of one ad.
  assert s.pairs["before"][2] == same_ad >= sum(n.planted for n in s.edits.values())
  assert (sum(n.planted for n in s.lookalikes.values()) + s.others.planted + same_ad
          == s.images * (s.images - 1) // 2)
  assert all(n.duplicate == 0 for n in s.lookalikes.values()) and s.others.duplicate == 0
  lines = audit_bench.table(s)
  assert lines[0] == f"templated ads, seeds 3: {s.images} images (1 x {s.images})"
  assert lines[1].startswith("operating point: pHash <= 16 bits, then duplicate: structure <= ")
  assert "| edit: flip | 1 | 0 | 1 | 0 | 0 |" in lines
  assert any(l.startswith("| precision (pairs) | | ") and l.endswith(" | 1.00 | | |")
             for l in lines)
  assert any(l.startswith("| recall (pairs) | | ") and l.endswith(" | 1.00 | | |") for l in lines)


def test_the_former_audit_groups_by_one_threshold(tmp_path):
  truth = templated.make_benchmark(tmp_path, seed=0, templates=2, ads_per_template=2,
                                   per_kind=1)
  rows = examples.read_jsonl(truth.data)
  ids = audit_bench.legacy_ids(rows)
  by_kind = {r.edit: i for i, r in enumerate(truth.rows) if r.edit}
  assert ids[by_kind["copy"]] == ids[truth.rows[by_kind["copy"]].ad]
  assert ids[by_kind["flip"]] != ids[truth.rows[by_kind["flip"]].ad]  # Flips were missed.
  assert len(ids) == len(rows) and np.issubdtype(ids.dtype, np.integer)
