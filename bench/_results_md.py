"""Write one benchmark's section of bench/RESULTS.md between its markers (atomically)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def machine() -> str:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{os.cpu_count()} cores, {cpu}{gpu}"


def load() -> str:
    """The machine's load averages when the section is written: over 1, 5, 15 minutes they cover the run,
    so a noisy (shared) machine shows in the record."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min) at the end of the run"


def write_section(name: str, title: str, body: str, command: str) -> None:
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    head = (f"{start}\n## {title}\n\n- machine: {machine()}; {load()}\n"
            f"- date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n- command: `{command}`\n- commit: {_commit()}\n\n")
    section = head + body.rstrip() + f"\n{end}"
    text = RESULTS.read_text() if RESULTS.is_file() else "# Benchmarks\n"
    if start in text and end in text:
        text = text[: text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    tmp = RESULTS.with_name(f".{RESULTS.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)


def _commit() -> str:
    """HEAD, and whether the code that ran (evalkit/, bench/, tasks/) differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=RESULTS.parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "evalkit", "bench", "tasks"], capture_output=True,
                               text=True, cwd=RESULTS.parent.parent).stdout.splitlines()
    except OSError:
        return "?"
    dirty = [line for line in dirty if not line.endswith("RESULTS.md")]
    return f"{head} + uncommitted changes in {len(dirty)} file(s)" if dirty else head
