"""Where checkpoints come from: grid layouts (what a user names -> specs) and checkpoint sources (a
spec -> a local weights file, and what to do once its units are written).

A layout is one module that registers a `Layout` in `LAYOUTS`: the argument it answers (`checkpoints`,
`run_dir`, `grid` or `model`, as the CLI's options), whether it claims a value, and how it turns it into
specs. A checkpoint source is one `CheckpointSource` in `SOURCES`: the engine asks `source_for(spec)`
to `fetch` the weights (in its prefetch thread, just in time) and to `release` them once the
checkpoint's units are written; it never names a layout or the hub. Local files fetch as themselves and
release nothing; the hub grid downloads and evicts (evalkit/grids/hub.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalkit.models.source import parse_source
from evalkit.models.spec import ModelSpec
from evalkit.registry import Registry

LAYOUT_MODULES = ("evalkit.grids.runs", "evalkit.grids.hub", "evalkit.grids.zoo")
ARGUMENTS = ("checkpoints", "run_dir", "grid", "model")  # in the order they are tried


@dataclass(frozen=True)
class Layout:
    """A way of naming checkpoints. `specs(value, model=, family=, where=, epochs=)` lists them in a stable order."""

    name: str
    argument: str  # one of ARGUMENTS
    claims: Callable[[str], bool]
    specs: Callable[..., list[ModelSpec]]
    priority: int = 0  # among the layouts of one argument, higher is asked first


def _check_layout(name: str, layout: Any) -> None:
    if not isinstance(layout, Layout) or layout.argument not in ARGUMENTS:
        raise TypeError(f"grid layout '{name}': expected a Layout answering one of {', '.join(ARGUMENTS)}")


LAYOUTS: Registry[Layout] = Registry("grid layout", LAYOUT_MODULES, "evalkit.layouts", _check_layout)


def register_layout(layout: Layout) -> Layout:
    return LAYOUTS.register(layout.name, layout)


def layout_for(argument: str, value: str) -> Layout | None:
    """The layout that claims `value` given as `argument` (highest priority first)."""
    for layout in sorted((x for x in LAYOUTS.values() if x.argument == argument), key=lambda x: -x.priority):
        if layout.claims(value):
            return layout
    return None


class CheckpointSource:
    """A local checkpoint file: fetched as itself, nothing to release. Subclasses override both."""

    name = "local"
    priority = 0

    def claims(self, spec: ModelSpec) -> bool:
        return True

    def fetch(self, spec: ModelSpec) -> Path | None:
        """The local weights file of `spec` (downloaded first if need be); None when the model carries its
        own weights (a hub model, a local-dir) or has none (random init)."""
        if spec.pretrained and not parse_source(spec.model).includes_weights and Path(spec.pretrained).is_file():
            return Path(spec.pretrained)
        return None

    def release(self, spec: ModelSpec) -> None:
        """All units of `spec` are written: drop what `fetch` brought (a download), keep the rest."""


def _check_source(name: str, source: Any) -> None:
    if not isinstance(source, CheckpointSource):
        raise TypeError(f"checkpoint source '{name}': expected a CheckpointSource instance")


SOURCES: Registry[CheckpointSource] = Registry("checkpoint source", ("evalkit.grids.hub",), "evalkit.sources",
                                              _check_source)
SOURCES.register(CheckpointSource.name, CheckpointSource())


def source_for(spec: ModelSpec) -> CheckpointSource:
    """The source that claims `spec` (highest priority first; local files claim everything)."""
    return max((s for s in SOURCES.values() if s.claims(spec)), key=lambda s: s.priority)
