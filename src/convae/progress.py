"""Progress of long work: a tqdm bar on a terminal, plain log lines everywhere else.

:class:`Progress` is the one progress display of convae (training steps, extraction, the probe's
feature passes). Where it shows:

* **a terminal** (``stderr`` is a TTY), or a Jupyter kernel: a tqdm bar, as before;
* **anything else** (CI logs, ``make demo | tee``, ``nohup``, ``2> file``): one plain line at most
  every ``interval`` seconds and one at :meth:`Progress.close` (and wherever the caller asks for one
  with :meth:`Progress.flush`, e.g. at an epoch's end), never a ``\\r``. Each line says done/total,
  the percentage, the caller's postfix (epoch, loss, img/s), the rate, the time spent and the time
  left::

      train: 40/100 step (40%) epoch=1/2 loss=0.0712 img_s=812 | 13.2 step/s, 0:03 elapsed, 0:05 left

The lines are log records at INFO of the logger ``convae.progress``. The ``convae`` command line
sets that logger to INFO (whatever ``-v`` says), so they reach its stderr; a library caller sees
them once it enables that logger (``logging.basicConfig(level=logging.INFO)`` or
``logging.getLogger("convae.progress").setLevel(logging.INFO)`` with a handler).

``interval`` defaults to the environment variable ``CONVAE_PROGRESS_INTERVAL`` (seconds; ``0``
logs every update), else 30.

``heartbeat=True`` (log mode only) adds a line every ``interval`` seconds even when no update comes,
for work whose single steps can each run for minutes (the probe's classifier fits): a daemon thread
logs the current line whenever ``interval`` seconds have passed since the last one, so the time
spent keeps moving while one step runs::

      probe: 3/12 fit (25%) stage=classifiers set=convae:stage2/avg2 clf=rbf_svc | 0.02 fit/s, 2:30 elapsed, 7:00 left

:meth:`Progress.close` stops and joins it; call it (or use the ``with`` form). No thread with
``interval`` 0 (every update already logs), for a bar, or when disabled.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from typing import IO

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)  # "convae.progress"

INTERVAL_ENV = "CONVAE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 30.0


def default_interval() -> float:
    """Seconds between log lines: ``$CONVAE_PROGRESS_INTERVAL`` if it is a number >= 0, else 30."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value < 0:
        logger.warning("%s=%r is not a number of seconds >= 0; using %g", INTERVAL_ENV, text, DEFAULT_INTERVAL)
        return DEFAULT_INTERVAL
    return value


def _in_notebook() -> bool:
    """True inside a Jupyter kernel, where tqdm draws a widget although stderr is no TTY."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # noqa: BLE001 - any odd IPython state: no notebook
        return False


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


def format_seconds(seconds: float) -> str:
    """``75.2`` -> ``1:15``; ``3725`` -> ``1:02:05``."""
    seconds = round(max(seconds, 0.0))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_rate(rate: float | None) -> str:
    """``2391.7`` -> ``2392``; ``13.24`` -> ``13.2``; ``0.4567`` -> ``0.46``; ``None`` -> ``?``."""
    if rate is None:
        return "?"
    return f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}" if rate >= 10 else f"{rate:.2f}"


class Progress:
    """Progress of ``total`` units of work: ``update(n)``, ``set_postfix(...)``, ``flush()``, ``close()``.

    ``enabled=False`` shows nothing. Otherwise a tqdm bar where ``file`` (default: ``sys.stderr``
    at construction) is a terminal or in a Jupyter kernel, else log lines (see the module
    docstring) at most every ``interval`` seconds (default :func:`default_interval`). ``initial``
    units were done before (a resumed run): the rate and the time left count only the new ones.
    ``heartbeat=True``: in log mode with ``interval`` > 0, also a line every ``interval`` seconds
    without updates, from a background thread that :meth:`close` stops (see the module docstring).
    Also a context manager; :meth:`close` may be called more than once.
    """

    def __init__(self, total: int | None = None, *, desc: str = "", unit: str = "it", initial: int = 0, enabled: bool = True,
                 interval: float | None = None, file: IO[str] | None = None, heartbeat: bool = False):
        self.total, self.desc, self.unit = total, desc, unit
        self.n = self.initial = int(initial)
        self.interval = default_interval() if interval is None else max(float(interval), 0.0)
        self.postfix: dict[str, str] = {}
        self._bar = None
        self._closed = False
        self._start = self._last_time = time.monotonic()
        self._last_line: tuple | None = None  # (n, postfix) of the last line logged
        self._lock = threading.Lock()  # one line at a time, from the caller or the heartbeat
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        file = sys.stderr if file is None else file
        if not enabled:
            self.mode = "off"
        elif _is_terminal(file) or _in_notebook():
            self.mode = "bar"
            self._bar = tqdm(total=total, initial=self.initial, desc=desc or None, unit=unit, file=file, dynamic_ncols=True,
                             leave=False)
        else:
            self.mode = "log"
            if heartbeat and self.interval > 0:
                self._heartbeat = threading.Thread(target=self._beat, name=f"convae-progress {desc}".strip(), daemon=True)
                self._heartbeat.start()

    # --- the interface -------------------------------------------------------------------------------
    def update(self, n: int = 1) -> None:
        """``n`` more units done; in log mode, a line if ``interval`` seconds have passed since the last."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self.mode == "log" and time.monotonic() - self._last_time >= self.interval:
            self._log()

    def set_postfix(self, **values) -> None:
        """Values shown after the count (``epoch="1/2", loss="0.0712"``); they replace the previous ones."""
        self.postfix = {key: str(value) for key, value in values.items()}
        if self._bar is not None:
            self._bar.set_postfix(self.postfix, refresh=False)

    def flush(self) -> None:
        """In log mode, a line now unless the last one already says the same (e.g. at an epoch's end)."""
        if self.mode == "log" and not self._closed and self._state() != self._last_line:
            self._log()

    def close(self) -> None:
        """Stop the heartbeat, then remove the bar or log the final line (unless the last one said the same)."""
        if self._closed:
            return
        if self._heartbeat is not None:
            self._stop.set()
            self._heartbeat.join()
            self._heartbeat = None
        if self._bar is not None:
            self._bar.close()
        else:
            self.flush()
        self._closed = True

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- log lines -------------------------------------------------------------------------------------
    def _state(self) -> tuple:
        return self.n, tuple(self.postfix.items())

    def line(self) -> str:
        """The log line for the current state (no ``\\r``, no newline)."""
        elapsed = time.monotonic() - self._start
        parts = [f"{self.desc}: " if self.desc else "", f"{self.n}"]
        if self.total is not None:
            parts.append(f"/{self.total}")
        parts.append(f" {self.unit}")
        if self.total:
            parts.append(f" ({100 * self.n / self.total:.0f}%)")
        if self.postfix:
            parts.append(" " + " ".join(f"{key}={value}" for key, value in self.postfix.items()))
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        tail = [f"{format_rate(rate)} {self.unit}/s", f"{format_seconds(elapsed)} elapsed"]
        if self.total is not None:
            left = max(self.total - self.n, 0)
            tail.append(f"{format_seconds(left / rate)} left" if rate else ("0:00 left" if left == 0 else "? left"))
        return "".join(parts) + " | " + ", ".join(tail)

    def _log(self) -> None:
        with self._lock:
            self._last_time = time.monotonic()
            self._last_line = self._state()
            if logger.isEnabledFor(logging.INFO):
                logger.info("%s", self.line())

    def _beat(self) -> None:
        """The heartbeat thread: a line whenever ``interval`` seconds passed since the last one, until close()."""
        while not self._stop.wait(max(self._last_time + self.interval - time.monotonic(), 0.01)):  # never a busy loop
            if time.monotonic() - self._last_time >= self.interval:
                self._log()


__all__ = ["DEFAULT_INTERVAL", "INTERVAL_ENV", "Progress", "default_interval", "format_rate", "format_seconds"]
