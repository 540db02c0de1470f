"""Functional forms of the error-vs-compute law.

All forms share one parametrisation, E(C) = a * (C + b)^c + d, so that coefficients from any form
line up in one table; a form only says which of b and d are free (the others are pinned to 0).
Bounds follow the reference fitter: a, b, d >= 0 and c <= 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evalkit.errors import UsageError


@dataclass(frozen=True)
class Form:
    """A member of the a (C + b)^c + d family; `has_b` / `has_d` say which offsets are fitted."""

    name: str
    has_b: bool
    has_d: bool
    formula: str

    @property
    def n_params(self) -> int:
        return 2 + int(self.has_b) + int(self.has_d)


FORMS: dict[str, Form] = {
    "saturation_both": Form("saturation_both", True, True, "E(C) = a (C + b)^c + d"),
    "saturation": Form("saturation", True, False, "E(C) = a (C + b)^c"),
    "power": Form("power", False, False, "E(C) = a C^c"),
}


def get_form(name: str) -> Form:
    """Look a form up by name, with an error that lists the valid names."""
    try:
        return FORMS[name]
    except KeyError:
        raise UsageError(f"unknown form {name!r}; choose one of {', '.join(FORMS)}") from None


def evaluate(x: np.ndarray | float, a: float, b: float, c: float, d: float) -> np.ndarray:
    """E(x) = a (x + b)^c + d, computed in log space for the power so huge a / tiny (x+b)^c stay finite."""
    x = np.asarray(x, dtype=float)
    return a * np.exp(c * np.log(x + b)) + d
