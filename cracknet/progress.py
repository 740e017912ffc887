"""One progress display for a long job: a bar on a terminal, otherwise a line every 30 seconds.

    progress = Progress(total=120_000, what="images", log=print)
    progress.update(4096)
    progress.close()

On a terminal (stderr is a TTY) the bar redraws in place; in ``ray job logs``,
``kubectl logs`` or a file, where a redrawn bar becomes thousands of lines, a
plain line is logged at most every ``every`` seconds instead.
"""

from __future__ import annotations

import sys
import time
from typing import Callable


class Progress:
    def __init__(self, total: int, what: str = "images", log: Callable[[str], None] = print, every: float = 30.0,
                 stream=None):
        self.total, self.what, self.log, self.every = total, what, log, every
        self.done = 0
        self.started = self.last = time.monotonic()
        stream = stream or sys.stderr
        self.bar = None
        if hasattr(stream, "isatty") and stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=" " + what.rstrip("s"), file=stream, dynamic_ncols=True, leave=False)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.monotonic()
        if now - self.last >= self.every and self.done < self.total:
            self.last = now
            self.log(self.line(now))

    def line(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        left = (self.total - self.done) / rate if rate > 0 else float("nan")
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        eta = f", about {_duration(left)} left" if left == left else ""
        return f"{self.done:,} of {self.total:,} {self.what}{share}, {rate:.1f} {self.what}/s{eta}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
