"""What identifies a model to evaluate: the source to load it from and the facts the table records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    """One checkpoint to evaluate.

    `model` is what the user gave: an architecture name, `hf-hub:ORG/REPO`, `local-dir:DIR` or a
    model-config JSON path; `pretrained` a tag, a weights file or None (random init).
    """

    model: str
    pretrained: str | None = None
    name: str = ""
    family: str | None = None
    arch: str | None = None
    epoch: int | None = None
    samples_seen: float | None = None
    pretrain_dataset: str | None = None
    lr_scheduler: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.model if not self.pretrained else f"{self.model}:{self.pretrained}"

    @property
    def checkpoint(self) -> str:
        """The weights' identity for the table: file path, hub id, or tag."""
        if self.model.startswith(("hf-hub:", "local-dir:")):
            return self.model
        return self.pretrained or ""

    @property
    def key(self) -> str:
        """Stable identity of the unit's model side (used for resume and sharding)."""
        return f"{self.model}|{self.pretrained or ''}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
