"""Progress a person can follow, on a terminal and in a log.

On a terminal a long stage shows a tqdm bar. When stderr is not a terminal (a Ray job log, CI,
``nohup``) tqdm by default shows nothing at all, and with ``disable=False`` it writes
carriage-return redraws that a log shows as one endless line. :func:`progress` therefore returns,
off a terminal, a tqdm whose every display is one plain line (``count/total, percent, rate, ETA``
and the postfix), printed at most every ``interval`` seconds — and, from a heartbeat thread, at
least every ``interval`` seconds while the stage is open, so a long batch (one vLLM call, one
epoch) never leaves the log silent for more than that.

tqdm does the counting, rate and ETA; only the line output and the heartbeat are written here
because tqdm has no line mode for logs.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import IO, Any

from tqdm import tqdm

#: seconds between plain lines when stderr is not a terminal (``RECALIGN_PROGRESS_INTERVAL``)
DEFAULT_INTERVAL = 15.0


def log_interval() -> float:
    raw = os.environ.get("RECALIGN_PROGRESS_INTERVAL")
    try:
        return max(0.01, float(raw)) if raw else DEFAULT_INTERVAL
    except ValueError:
        return DEFAULT_INTERVAL


class LineProgress(tqdm):
    """tqdm that prints one newline-terminated line per display, for logs.

    A line is printed on the first update, then whenever ``interval`` seconds have passed since
    the last line (on an update, or from the heartbeat when no update comes), and at close."""

    def __init__(self, *args: Any, interval: float | None = None, **kwargs: Any) -> None:
        self._interval = log_interval() if interval is None else interval
        kwargs.update(disable=False, mininterval=self._interval, miniters=1, ascii=True,
                      dynamic_ncols=False, ncols=0, leave=True)
        self._last_line = 0.0
        self._last_text = ""
        self._counted_at = 0.0  # elapsed seconds at the last count (update)
        self._lock_line = threading.Lock()
        self._stop = threading.Event()
        super().__init__(*args, **kwargs)
        self._beat = threading.Thread(target=self._heartbeat, name="progress-heartbeat",
                                      daemon=True)
        self._beat.start()

    def update(self, n: float | None = 1) -> bool | None:
        out = super().update(n)
        self._counted_at = self._time() - self.start_t
        return out

    def _line(self) -> str:
        d = self.format_dict
        n, total, elapsed = d["n"], d["total"], d["elapsed"]
        # the mean rate of this run's counts (a resumed run's ``initial`` was not done now), up
        # to the last count: steadier in a log than tqdm's smoothed one, and not diluted by the
        # time already spent on the next item (one long epoch)
        done = n - (d.get("initial") or 0)
        rate = done / self._counted_at if self._counted_at > 0 and done > 0 else None
        unit = (d.get("unit") or "it").strip()
        parts = [f"{self.desc.rstrip(': ')}:" if self.desc else "progress:"]
        if total:
            parts.append(f"{n:,.0f}/{total:,.0f} {unit} ({100.0 * n / total:.0f}%)")
        else:
            parts.append(f"{n:,.0f} {unit}")
        parts.append(f"elapsed {self.format_interval(elapsed)}")
        if rate:
            parts.append(f"{rate:,.2f} {unit}/s")
            if total and n < total:
                # time since the last count is already spent on the next item: it counts down
                left = max(0.0, (total - n) / rate - (elapsed - self._counted_at))
                parts.append(f"ETA {self.format_interval(left)}")
        elif total and n < total:
            parts.append("ETA unknown (no item done yet)")
        if d.get("postfix"):
            parts.append(str(d["postfix"]))
        return " ".join(parts)

    def _emit(self, *, unless_same: bool = False) -> None:
        with self._lock_line:
            line = self._line()
            if unless_same and line == self._last_text:
                return
            self.fp.write(line + "\n")
            self.fp.flush()
            self._last_line, self._last_text = time.monotonic(), line

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        # tqdm redraws on every set_postfix/refresh; a log gets a line per interval at most
        if not self._last_line or time.monotonic() - self._last_line >= self._interval:
            self._emit()
        return True

    def _heartbeat(self) -> None:
        while not self._stop.wait(min(self._interval, 1.0)):
            if time.monotonic() - self._last_line >= self._interval:
                self._emit()

    def close(self) -> None:
        if getattr(self, "_stop", None) is not None and not self._stop.is_set():
            self._stop.set()
            if self._beat is not threading.current_thread():
                self._beat.join(timeout=2.0)
            if not self.disable:
                self._emit(unless_same=True)  # the final count, once
            self.disable = True  # tqdm.close must not print again
        super().close()


def progress(desc: str, unit: str = "it", total: float | None = None, *, disable: bool = False,
             file: IO[str] | None = None, interval: float | None = None, **kwargs: Any) -> tqdm:
    """A bar on a terminal, plain lines every ``interval`` s otherwise; nothing if ``disable``
    (a job's ``--no-progress``) or ``RECALIGN_PROGRESS=0`` in the environment, which local Ray
    workers inherit (the training progress runs there)."""
    fp = file if file is not None else sys.stderr
    if disable or os.environ.get("RECALIGN_PROGRESS", "1").lower() in ("0", "false", "off"):
        return tqdm(total=total, disable=True)
    isatty = getattr(fp, "isatty", None)
    if isatty is not None and isatty():
        return tqdm(desc=desc, unit=unit, total=total, file=fp, **kwargs)
    return LineProgress(desc=desc, unit=unit, total=total, file=fp, interval=interval, **kwargs)


__all__ = ["LineProgress", "log_interval", "progress"]
