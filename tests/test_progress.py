"""palijudge.progress: bars on stderr with rate and ETA; lines printed around them."""

from __future__ import annotations

import pytest

from palijudge import progress


@pytest.fixture
def mode():
  yield progress.set_mode
  progress.set_mode("auto")


def test_always_draws_count_rate_and_eta_on_stderr(mode, capsys):
  mode("always")
  with progress.bar(3, "valid", "ex") as bar:
    for _ in range(3):
      bar.update(1)
  out, err = capsys.readouterr()
  assert out == ""
  assert "valid:" in err and "3/3 [" in err and "ex/s" in err and "<00:00" in err


def test_auto_and_never_stay_silent_off_a_terminal(mode, capsys):
  for m in ("auto", "never"):  # pytest's stderr is not a terminal
    mode(m)
    with progress.bar(3, "valid", "ex") as bar:
      bar.update(3)
  assert capsys.readouterr().err == ""
  mode("always")
  with progress.bar(3, "x", enabled=False) as bar:
    bar.update(3)
  assert capsys.readouterr().err == ""


def test_write_clears_the_bar_around_a_line(mode, capsys):
  mode("always")
  lines = []
  with progress.bar(2, "train", "step") as bar:
    bar.update(1)
    capsys.readouterr()
    progress.write(lambda s: (lines.append(s), print(s)), "step:  1/ 2   lr: 0.01000   loss: 1.0")
    out, err = capsys.readouterr()
  assert out == "step:  1/ 2   lr: 0.01000   loss: 1.0\n" and lines
  assert err.startswith("\r") and "1/2" in err  # cleared, then redrawn


def test_unknown_mode_is_refused(mode):
  with pytest.raises(ValueError, match="sometimes"):
    mode("sometimes")
