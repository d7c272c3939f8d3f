"""Error gallery: one static, self-contained HTML page per evaluation.

Two sections, false positives (label `no`, judged `yes`: the costly error)
and false negatives (label `yes`, judged `no`), each sorted by confidence:
the most confidently wrong first (FP by p(yes) descending, FN ascending).
Thumbnails are embedded as JPEG data URIs, so the page can be copied or
mailed alone. At most `limit` images per section (the count says how many
there were).
"""

from __future__ import annotations

import base64
import html
import io
import os
import re

import numpy as np
from PIL import Image

from palijudge.data import images as images
from palijudge import files
from palijudge.errors import UserError

_CSS = ("body{font-family:sans-serif;margin:1em}figure{display:inline-block;width:180px;"
        "margin:4px;vertical-align:top;font-size:12px;word-break:break-all}"
        "img{max-width:176px;max-height:176px;border:1px solid #aaa}.p{font-weight:bold}")


def thumbnail_uri(path: str, size: int = 176) -> str:
  """JPEG data URI of the image (first frame), longest side `size`; "" if unreadable."""
  try:
    rgb = images.decode_rgb(path)
  except UserError:
    return ""
  img = Image.fromarray(rgb)
  img.thumbnail((size, size))
  buf = io.BytesIO()
  img.save(buf, format="JPEG", quality=80)
  return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(ex, p: float) -> str:
  uri = thumbnail_uri(ex.image)
  img = f'<img src="{uri}" alt="">' if uri else "<div>(unreadable)</div>"
  return (f"<figure>{img}<figcaption><span class=p>p(yes) {p:.4f}</span><br>"
          f"{html.escape(ex.raw_image)}<br>{html.escape(os.path.basename(ex.source))}:"
          f"{ex.line}</figcaption></figure>")


def _section(title: str, idx: np.ndarray, result, limit: int) -> list[str]:
  out = [f"<h2>{html.escape(title)}: {len(idx)}</h2>"]
  if len(idx) > limit:
    out.append(f"<p>showing the {limit} most confident</p>")
  out += [_figure(result.examples[i], float(result.p_yes[i])) for i in idx[:limit]]
  return out


def error_indices(labels: np.ndarray, pred: np.ndarray, p_yes: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """(FP indices by p(yes) descending, FN indices by p(yes) ascending); stable order."""
  fp = np.flatnonzero(pred & ~labels)
  fn = np.flatnonzero(~pred & labels)
  return (fp[np.argsort(-p_yes[fp], kind="mergesort")],
          fn[np.argsort(p_yes[fn], kind="mergesort")])


def render(result, title: str, limit: int) -> str:
  """The page for one EvalResult (see `scoring.EvalResult`)."""
  fp, fn = error_indices(result.labels, np.asarray(result.pred, bool), np.asarray(result.p_yes))
  c = result.confusion
  head = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
          f"<style>{_CSS}</style><h1>{html.escape(title)}</h1>"
          f"<p>Tp={c.tp} Tn={c.tn} Fp={c.fp} Fn={c.fn}, threshold {result.threshold:.6g}</p>")
  body = (_section("False positives (label no, judged yes)", fp, result, limit)
          + _section("False negatives (label yes, judged no)", fn, result, limit))
  return head + "\n".join(body) + "\n"


def slug(text: str) -> str:
  """A file-name-safe version of a set name and tag."""
  return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "set"


def write(folder: str, name: str, tag: str, result, limit: int) -> str:
  """Writes FOLDER/<slug(name tag)>.html atomically; returns the path."""
  title = f"{name} ({tag})" if tag else name
  path = os.path.join(folder, slug(title) + ".html")
  files.write_text(path, [render(result, title, limit)])
  return path


# --- Duplicate groups (the leakage audit, `data.audit`) -------------------------

def _audit_figure(audit, i: int, k: int) -> str:
  it = audit.items[i]
  uri = thumbnail_uri(it.example.image)
  img = f'<img src="{uri}" alt="">' if uri else "<div>(unreadable)</div>"
  return (f"<figure>{img}<figcaption><span class=p>#{k} {html.escape(it.set)}: "
          f"{it.example.suffix}</span><br>{html.escape(it.example.raw_image)}<br>"
          f"{html.escape(os.path.basename(it.example.source))}:{it.example.line}"
          f"</figcaption></figure>")


def _audit_group(audit, n: int, group) -> str:
  from palijudge.data.audit_report import describe  # Here: imagehash/scipy load for an audit.
  kind = f"leak across {'/'.join(group.sets)}" if group.leak else f"within {group.sets[0]}"
  pos = {i: k for k, i in enumerate(group.members, 1)}
  pairs = "; ".join(f"#{pos[p.a]}-#{pos[p.b]} {describe(p)}" for p in audit.pairs_of(group))
  head = (f"<h2>Group {n}: {len(group.members)} images, {html.escape(kind)}"
          f"{', labels disagree' if group.conflict else ''}</h2><p>{html.escape(pairs)}</p>")
  return head + "".join(_audit_figure(audit, i, k) for i, k in pos.items())


def _audit_possible(audit, n: int, pair) -> str:
  from palijudge.data.audit_report import describe, suggestion
  a, b = audit.items[pair.a].set, audit.items[pair.b].set
  kind = f"across {a}/{b}" if audit.across(pair) else f"within {a}"
  lines = "\n".join(html.escape(line) for line in suggestion(audit, pair))
  head = (f"<h2>Possible duplicate {n}: {html.escape(kind)}</h2><p>{html.escape(describe(pair))}"
          f"<br>to decide, add one of these lines to "
          f"{html.escape(files.shown(audit.decisions_file))}:</p><pre>{lines}</pre>")
  return head + "".join(_audit_figure(audit, i, k) for k, i in enumerate((pair.a, pair.b), 1))


def render_audit(audit, title: str) -> str:
  """The page for one `data.audit.Audit`: each group's thumbnails (leaks first), then each
  possible duplicate's (across sets first) with the lines that decide it."""
  order = sorted(range(len(audit.groups)), key=lambda n: not audit.groups[n].leak)
  maybe = audit.possible
  shown = sorted(range(len(maybe)), key=lambda n: not audit.across(maybe[n]))
  n_in = sum(len(g.members) for g in audit.groups)
  head = (f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title>"
          f"<style>{_CSS}</style><h1>{html.escape(title)}</h1>"
          f"<p>{len(audit.items)} images; {len(audit.groups)} group(s) of duplicates holding "
          f"{n_in}: {len(audit.leaks)} across sets, {len(audit.conflicts)} with both labels; "
          f"{len(maybe)} possible duplicate pair(s); checked by "
          f"{', '.join(audit.config.methods)}</p>")
  body = ([_audit_group(audit, n + 1, audit.groups[n]) for n in order]
          + [_audit_possible(audit, n + 1, maybe[n]) for n in shown])
  return head + "\n".join(body) + "\n"


def write_audit(path: str, audit, title: str) -> str:
  """Writes the audit page to `path` atomically; returns the path."""
  files.write_text(path, [render_audit(audit, title)])
  return path
