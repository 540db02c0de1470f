"""On-disk dataset formats, one module each, found through the `FORMATS` registry.

A format module registers a `Format`: the kind of task data it holds (`classification`, `retrieval`,
`segmentation`), how to recognise a folder in it, and how to read a split. `open_classification`,
`open_retrieval` and `open_segmentation` (through evalkit/data/open.py) ask the formats of their kind
in priority order; a new layout is one module plus one line in `FORMAT_MODULES` (or an
`evalkit.formats` entry point of another package).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.registry import Registry

FORMAT_MODULES = ("evalkit.data.formats.wds", "evalkit.data.formats.hf", "evalkit.data.formats.folder",
                  "evalkit.data.formats.captions", "evalkit.data.formats.segmentation")


@dataclass(frozen=True)
class Format:
    """`detect(root, split, wds_split)` says whether `root` is in this format; `read(root, split,
    wds_split)` returns its ImageSource (raising DataError, naming the file, on what it cannot use)."""

    name: str
    kind: str
    detect: Callable[[Path, str, str], bool]
    read: Callable[[Path, str, str], Any]
    layout: str  # what the folder looks like, for the error that lists every format of a kind
    priority: int = 0  # asked first when higher


def _check_format(name: str, fmt: Any) -> None:
    if not isinstance(fmt, Format):
        raise TypeError(f"data format '{name}': expected a Format")


FORMATS: Registry[Format] = Registry("data format", FORMAT_MODULES, "evalkit.formats", _check_format)


def register_format(fmt: Format) -> Format:
    return FORMATS.register(fmt.name, fmt)


def formats_of(kind: str) -> list[Format]:
    return sorted((f for f in FORMATS.values() if f.kind == kind), key=lambda f: -f.priority)
