"""Progress: a bar on a terminal, a plain line now and then everywhere else (ray job logs, kubectl logs)."""

import io

from cracknet.progress import Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_off_a_terminal_it_logs_a_line_at_most_every_interval():
    lines = []
    progress = Progress(1000, "images", log=lines.append, every=0.0, stream=io.StringIO())
    progress.update(250)
    progress.update(750)  # the end: the caller's summary line says it, not the progress
    progress.close()
    assert len(lines) == 1 and lines[0].startswith("250 of 1,000 images (25%), ")
    assert "images/s" in lines[0] and "left" in lines[0]
    quiet = []
    slow = Progress(1000, "images", log=quiet.append, every=3600.0, stream=io.StringIO())
    for _ in range(10):
        slow.update(10)
    assert quiet == []


def test_on_a_terminal_it_draws_one_bar_and_logs_nothing():
    lines, screen = [], Terminal()
    progress = Progress(100, "images", log=lines.append, stream=screen)
    progress.update(40)
    progress.update(60)
    progress.close()
    assert lines == [] and "0/100" in screen.getvalue()  # drawn in place (and cleared for the summary)
