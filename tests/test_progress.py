"""Progress: a line per unit; off a terminal each line carries the ETA at the average rate so far."""

from __future__ import annotations

import evalkit.progress as progress_mod
from evalkit.progress import Progress


def test_lines_carry_eta_off_a_terminal(monkeypatch, capsys) -> None:
    clock = iter([100.0, 110.0, 130.0, 160.0])  # start, then three units finishing
    monkeypatch.setattr(progress_mod.time, "monotonic", lambda: next(clock))
    p = Progress(3, bar=False)
    p.unit("a x t: acc1=0.5000")  # 10 s for 1 unit -> 2 left at 10 s each
    p.unit("b x t: FAILED (DataError: x)")  # 30 s for 2 units -> 1 left at 15 s
    p.unit("c x t: acc1=0.7500")
    p.close()
    assert capsys.readouterr().err.splitlines() == [
        "[1/3] a x t: acc1=0.5000  (eta 0:00:20)",
        "[2/3] b x t: FAILED (DataError: x)  (eta 0:00:15)",
        "[3/3] c x t: acc1=0.7500",
    ]


def test_bar_on_a_terminal_counts_units(capsys) -> None:
    p = Progress(2, bar=True)
    p.unit("a x t: acc1=1.0000")
    p.unit("b x t: acc1=0.0000")
    assert p.bar is not None and p.bar.n == 2 and p.bar.total == 2
    p.close()
    err = capsys.readouterr().err
    assert "[1/2] a x t: acc1=1.0000" in err and "[2/2] b x t" in err and "2/2" in err
