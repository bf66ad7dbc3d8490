"""A progress bar: tqdm when it is installed, else one plain line on stderr.

    for i in (bar := progress(range(n), total=n, desc="meta-train")):
        ...
        bar.set_postfix(loss=f"{loss:.3f}")

Both kinds accept ``set_postfix(**values)`` and ``close()``.  The plain line is
redrawn with ``\\r`` at most ``PLAIN_UPDATES_PER_SECOND`` times a second.
"""

import sys
import time

try:
    from tqdm import tqdm
except ImportError:  # tqdm is the optional "progress" extra
    tqdm = None

PLAIN_UPDATES_PER_SECOND = 10


def progress(iterable, total=None, desc=""):
    """Wrap ``iterable`` in a progress bar that also shows ``set_postfix`` values."""
    if tqdm is not None:
        return tqdm(iterable, total=total, desc=desc, dynamic_ncols=True)
    return PlainProgress(iterable, total, desc)


class PlainProgress:
    """``desc: done/total key=value ...`` on one stderr line, without tqdm."""

    def __init__(self, iterable, total=None, desc="", stream=None):
        self.iterable, self.desc = iterable, desc
        self.total = total if total is not None else _length(iterable)
        self.stream = stream if stream is not None else sys.stderr
        self.done, self.postfix = 0, {}
        self._last_draw, self._width, self._closed = 0.0, 0, False

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.done += 1
                self._draw()
        finally:
            self.close()

    def set_postfix(self, **values):
        self.postfix = values
        self._draw()

    def close(self):
        if not self._closed:
            self._draw(force=True)
            self.stream.write("\n")
            self.stream.flush()
            self._closed = True

    def _draw(self, force=False):
        now = time.monotonic()
        if self._closed or (not force and now - self._last_draw < 1.0 / PLAIN_UPDATES_PER_SECOND):
            return
        self._last_draw = now
        count = f"{self.done}/{self.total}" if self.total is not None else f"{self.done}"
        extras = " ".join(f"{key}={value}" for key, value in self.postfix.items())
        line = f"{self.desc}: {count} {extras}".rstrip()
        self.stream.write("\r" + line.ljust(self._width))  # pad over a longer old line
        self._width = len(line)
        self.stream.flush()


def _length(iterable):
    try:
        return len(iterable)
    except TypeError:
        return None
