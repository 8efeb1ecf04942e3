"""Progress where someone watches it: live bars to the terminal under the reports runner, one line in the report."""

from __future__ import annotations

import io
import sys

import pytest

from cxrutils import progress


@pytest.fixture
def terminal(monkeypatch):
    """The kernel's own stderr (the runner's terminal), as a string."""
    stream = io.StringIO()
    monkeypatch.setattr(sys, "__stderr__", stream)
    return stream


def test_under_the_runner_the_bar_goes_to_the_terminal_and_the_cell_keeps_one_line(monkeypatch, terminal, capsys):
    monkeypatch.setenv(progress.PROGRESS_VARIABLE, progress.TERMINAL)
    for _ in progress.progress_bar(range(3), desc="caching images at 32px", unit="img", done="cached {n:,} films"):
        pass
    bar = progress.progress_bar(total=1500, desc="predict test", unit="img")
    bar.update(1500)
    bar.close()
    quiet = progress.progress_bar(total=2, desc="epoch 1/2", done=False)
    quiet.update(2)
    quiet.close()
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["cached 3 films in 0 s", "predict test: 1,500 img in 0 s"]
    assert captured.err == ""
    assert "caching images at 32px: 100%" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert "epoch 1/2" in terminal.getvalue()


def test_outside_the_runner_a_bar_is_a_plain_tqdm_bar_on_stderr(monkeypatch, terminal, capsys):
    monkeypatch.delenv(progress.PROGRESS_VARIABLE, raising=False)
    for _ in progress.progress_bar(range(3), desc="caching", done="cached {n:,} films"):
        pass
    captured = capsys.readouterr()
    assert captured.out == "" and "caching: 100%" in captured.err and terminal.getvalue() == ""


def test_a_disabled_bar_leaves_nothing(monkeypatch, terminal, capsys):
    monkeypatch.setenv(progress.PROGRESS_VARIABLE, progress.TERMINAL)
    for _ in progress.progress_bar(range(3), desc="validate", disable=True):
        pass
    assert capsys.readouterr().out == "" and terminal.getvalue() == ""


def test_announce_keeps_the_time_left_out_of_the_report(monkeypatch, terminal, capsys):
    monkeypatch.setenv(progress.PROGRESS_VARIABLE, progress.TERMINAL)
    progress.announce("epoch 1/12: val AUROC 0.6543", live="; up to 3 min left")
    assert capsys.readouterr().out == "epoch 1/12: val AUROC 0.6543\n"
    assert terminal.getvalue() == "epoch 1/12: val AUROC 0.6543; up to 3 min left\n"
    monkeypatch.delenv(progress.PROGRESS_VARIABLE)
    progress.announce("epoch 2/12", live="; up to 2 min left")  # a terminal or JupyterLab: someone watches
    assert capsys.readouterr().out == "epoch 2/12; up to 2 min left\n"


def test_the_runner_setting_is_scoped_to_its_block(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_VARIABLE, raising=False)
    with progress.progress_to_terminal():
        assert progress.to_terminal()
    assert not progress.to_terminal()


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0 s"), (12, "12 s"), (185, "3 min 05 s"), (7620, "2 h 07 min")])
def test_durations_read_as_people_say_them(seconds, text):
    assert progress.duration_text(seconds) == text
