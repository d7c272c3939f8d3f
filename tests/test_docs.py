"""The README and docs/ cannot go stale: every fenced ```sh block runs here.

A block runs on the tiny model in a fresh project made the way a user gets one
(the repository's tracked files, the installed environment); a block that needs
a GPU, the Kaggle weights or a cluster starts with `# not run: <reason>` and is
skipped. Each page runs in its own copy, its blocks in order, under `set -e`.
"""
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").glob("*.md"))
NOT_RUN = "# not run:"
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
  page: str
  line: int  # of the opening fence, 1-based
  lang: str
  text: str

  @property
  def runs(self) -> bool:
    return self.lang == "sh" and not self.text.lstrip().startswith(NOT_RUN)


def blocks(path: Path) -> list[Block]:
  """The fenced blocks of a Markdown page, in order."""
  found, lang, start, body = [], None, 0, []
  for i, line in enumerate(path.read_text().splitlines(), 1):
    m = FENCE.match(line)
    if lang is None and m:
      lang, start, body = m.group(1), i, []
    elif lang is not None and line.strip() == "```":
      page = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
      found.append(Block(page, start, lang, "\n".join(body) + "\n"))
      lang = None
    elif lang is not None:
      body.append(line)
  assert lang is None, f"{path}: the fence opened on line {start} is never closed"
  return found


def test_blocks_finds_sh_blocks_and_not_run_marks(tmp_path):
  page = tmp_path / "p.md"
  page.write_text("x\n```sh\necho a\n```\n```console\nls\n```\n```sh\n# not run: gpu\nnvidia-smi\n```\n")
  got = blocks(page)
  assert [(b.line, b.lang, b.runs) for b in got] == [(2, "sh", True), (5, "console", False),
                                                     (8, "sh", False)]


def test_readme_is_one_screen_and_links_every_page():
  text = README.read_text()
  assert len(text.splitlines()) <= 200
  for page in PAGES:
    assert f"(docs/{page.name})" in text, f"README.md does not link docs/{page.name}"
  for link in re.findall(r"\]\((docs/[^)#]+)", text):
    assert (ROOT / link).is_file(), f"README.md links {link}, which does not exist"


@pytest.mark.parametrize("path", [README, *PAGES], ids=lambda p: p.name)
def test_every_sh_block_runs_or_says_why_not(path):
  for b in blocks(path):
    if b.lang == "sh" and b.text.lstrip().startswith(NOT_RUN):
      reason = b.text.lstrip().splitlines()[0][len(NOT_RUN):].strip()
      assert reason, f"{b.page}:{b.line}: '# not run:' without a reason"
    # A command shown in a console block would escape this test: commands go in sh blocks.
    if b.lang == "console":
      for line in b.text.splitlines():
        assert not re.match(r"\s*(\./)?playground/\d\d-", line), (
            f"{b.page}:{b.line}: a command in a console block; make it an sh block")


def _project(tmp_path: Path) -> Path:
  """A copy of the repository's tracked files with the installed environment linked in."""
  root = tmp_path / "palijudge"
  files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                         check=True).stdout.decode().split("\0")
  for name in filter(None, files):
    src = ROOT / name
    if src.is_file():
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(src, root / name)
  (root / ".venv").symlink_to((ROOT / ".venv").resolve())
  # The environment is installed already: make's setup stamp must not look older than
  # the copied pyproject.toml, or `make split` would reinstall it.
  os.utime(root / "pyproject.toml", (0, 0))
  return root


RUNNABLE = [p for p in [README, *PAGES] if any(b.runs for b in blocks(p))]


@pytest.mark.script
@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_the_page_runs(path, tmp_path):
  root = _project(tmp_path)
  venv_bin = str((ROOT / ".venv" / "bin").resolve())
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(root / "src"),
             PATH=venv_bin + os.pathsep + os.environ["PATH"])
  env.pop("MAKEFLAGS", None)
  for b in filter(lambda b: b.runs, blocks(path)):
    script = "set -e -o pipefail\ntrap 'echo \"failed: $BASH_COMMAND\" >&2' ERR\n" + b.text
    proc = subprocess.run(["bash", "-c", script], cwd=root, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (
        f"{b.page}, the block at line {b.line}, exit {proc.returncode}:\n"
        f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
