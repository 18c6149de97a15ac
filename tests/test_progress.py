"""Progress bars: a live bar on a terminal, plain periodic lines in logs (CI, nohup)."""

from __future__ import annotations

import io
import time

from tqdm import tqdm

from transmed.progress import LogLineBar, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_complete_lines_not_one_carriage_return_update_per_step() -> None:
    log = io.StringIO()
    bar = progress_bar(total=400, file=log, desc="train", unit="step", dynamic_ncols=True)
    for _ in range(400):
        bar.update(1)
        bar.set_postfix(loss="0.123")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3  # start and end; 400 updates within 30 s print nothing else
    assert lines[-1].startswith("train: 400/400 step (100%)") and "loss=0.123" in lines[-1]


def test_the_log_line_repeats_at_the_interval() -> None:
    log = io.StringIO()
    bar = progress_bar(range(6), file=log, desc="synth", unit="case", mininterval=0.05)
    for _ in bar:
        time.sleep(0.06)  # each step outlasts the interval: a line per step, and no more
    lines = log.getvalue().splitlines()
    assert [line.split()[1] for line in lines] == [f"{i}/6" for i in range(7)]


def test_a_terminal_keeps_the_live_tqdm_bar() -> None:
    bar = progress_bar(range(3), file=_Terminal(), desc="x")
    assert type(bar) is tqdm and not isinstance(bar, LogLineBar)
    list(bar)


def test_disabled_and_unknown_length_bars() -> None:
    log = io.StringIO()
    list(progress_bar(range(5), file=log, disable=True))
    list(progress_bar(range(5), file=log, disable=None))  # tqdm: hidden off a terminal
    assert log.getvalue() == ""
    bar = progress_bar(file=log, desc="files", mininterval=0)
    bar.update(2)
    bar.close()
    assert log.getvalue().splitlines()[-1].startswith("files: 2 it")
