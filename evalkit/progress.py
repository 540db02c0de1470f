"""Run progress: one line per finished unit, and on a terminal an overall bar with rate and ETA.

Off a terminal (SLURM logs, CI) there is no bar to redraw, so each unit line carries the ETA itself.
"""

from __future__ import annotations

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
