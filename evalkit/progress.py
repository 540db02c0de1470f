"""Run progress: one line per finished unit, and on a terminal an overall bar with rate and ETA.

Off a terminal (SLURM logs, CI) there is no bar to redraw, so each unit line carries the ETA itself.
"""

from __future__ import annotations

import logging
import sys
import time


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    def __init__(self, total: int, bar: bool) -> None:
        self.total, self.done, self.t0 = total, 0, time.monotonic()
        self.bar = None
        if bar and total:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="unit", desc="evalkit", file=sys.stderr, dynamic_ncols=True)

    def eta(self) -> float | None:
        """Seconds left at the average rate so far (None before the first unit)."""
        if not self.done:
            return None
        return (time.monotonic() - self.t0) / self.done * (self.total - self.done)

    def unit(self, msg: str) -> None:
        """Report one finished (or failed) unit."""
        self.done += 1
        line = f"[{self.done}/{self.total}] {msg}"
        if self.bar is not None:
            self.bar.write(line, file=sys.stderr)
            self.bar.update(1)
            return
        left = self.eta()
        if self.done < self.total and left is not None:
            line += f"  (eta {_clock(left)})"
        print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class OnceLog:
    """Warnings said once per process and key (no usable GPU, FLOPs that cannot be counted for an
    architecture): explicit state with a `reset`, rather than module flags tests flip by hand."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def warn(self, logger: logging.Logger, key: str, msg: str, *args: object) -> bool:
        """Log `msg % args` the first time `key` is seen; return whether it was logged."""
        if key in self._said:
            return False
        self._said.add(key)
        logger.warning(msg, *args)
        return True

    def reset(self) -> None:
        self._said.clear()


WARNINGS = OnceLog()
