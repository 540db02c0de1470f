"""evalkit.fit: scaling laws E(C) = a (C + b)^c + d per model family, fitted to a results table.

Importing this package is cheap: numpy/pandas/scipy load on first use of `fit_table`, and
matplotlib only when plots are written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evalkit.fit.api import FitReport, fit_table

__all__ = ["fit_table", "FitReport"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from evalkit.fit import api

        return getattr(api, name)
    raise AttributeError(name)
