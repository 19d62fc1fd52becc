"""Progress of a batch on a terminal: files done of total, MB/s, ETA and the files in flight."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, Sequence

from .results import FileResult


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class BatchProgress:
    """Files done of total, MB/s, ETA and the files in flight.

    ``live`` (a terminal): one status line on ``stream`` redrawn a few times a second by a thread;
    :meth:`print_line` prints a message above it. Not live: nothing here (the caller prints one
    plain line per finished file). MB/s counts the input bytes of converted files; the ETA assumes
    the remaining files go at the same rate.
    """

    def __init__(self, inputs: Sequence[Path], stream, live: bool, interval_s: float = 0.25):
        self.sizes = {}
        for path in inputs:
            try:
                self.sizes[Path(path)] = os.stat(path).st_size
            except OSError:
                self.sizes[Path(path)] = 0
        self.total = len(self.sizes)
        self.stream = stream
        self.live = live
        self.interval_s = interval_s
        self.done = 0
        self.bytes_done = 0
        self.bytes_converted = 0
        self.fractions: Dict[Path, float] = {}
        self.began = time.perf_counter()
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = None
        self._drawn = False

    def __enter__(self):
        if self.live:
            self._thread = threading.Thread(target=self._loop, name="scanco-progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._clear()
        return False

    # events from the batch
    def start(self, path: Path) -> None:
        with self._lock:
            self.fractions.setdefault(Path(path), 0.0)

    def fraction_callback(self, path: Path):
        def report(done: int, total: int):
            with self._lock:
                self.fractions[Path(path)] = done / max(total, 1)
            return None
        return report if self.live else None

    def finish(self, result: FileResult) -> None:
        with self._lock:
            path = Path(result.input)
            self.fractions.pop(path, None)
            self.done += 1
            self.bytes_done += self.sizes.get(path, 0)
            if result.status == "converted":
                self.bytes_converted += self.sizes.get(path, 0)

    # drawing
    def line(self) -> str:
        with self._lock:
            elapsed = max(time.perf_counter() - self.began, 1e-9)
            in_flight_bytes = sum(self.sizes.get(p, 0) * f for p, f in self.fractions.items())
            rate = (self.bytes_converted + in_flight_bytes) / elapsed
            remaining = sum(self.sizes.values()) - self.bytes_done - in_flight_bytes
            eta = _duration(remaining / rate) if rate > 0 and self.done < self.total else "--:--"
            flying = ", ".join(f"{p.name} {100 * f:.0f}%" if f else p.name for p, f in self.fractions.items())
            return (f"[{self.done}/{self.total} files] {rate / 1e6:7.1f} MB/s  ETA {eta}"
                    + (f"  now: {flying}" if flying else ""))

    def _draw(self) -> None:
        text = self.line()
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, AttributeError, ValueError):
            width = 0
        width = width if width >= 40 else 120  # a pseudo-terminal may say 0
        self.stream.write("\r\033[K" + text[: width - 1])
        self.stream.flush()
        self._drawn = True

    def _clear(self) -> None:
        with self._lock:
            if self._drawn:
                self.stream.write("\r\033[K")
                self.stream.flush()
                self._drawn = False

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            with self._lock:
                self._draw()

    def print_line(self, stream, text: str) -> None:
        """Print ``text`` on ``stream`` without tearing the status line."""
        with self._lock:
            self._clear()
            stream.write(text + "\n")
            stream.flush()
            if self.live and not self._stop.is_set():
                self._draw()
