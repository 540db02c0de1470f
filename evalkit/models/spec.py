"""What identifies a model to evaluate: the source to load it from and the facts the table records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class ModelSpec:
    """One checkpoint to evaluate.

    `model` is what the user gave: an architecture name, `hf-hub:ORG/REPO`, `local-dir:DIR` or a
    model-config JSON path; `pretrained` a tag, a weights file or None (random init).

    The paper's grid identity (`namespace`, `model_simple`, `samples_seen_scale_pretty`, `total_epochs`,
    `global_batch_size`, `run`: the training run's full name) goes into the results table as columns.
    `error`, when set, is why this checkpoint cannot be built (an unparseable run name, an unsupported
    namespace): loading it fails with that message, so its units fail and the rest of a grid runs.
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
    namespace: str | None = None
    model_simple: str | None = None
    samples_seen_scale_pretty: str | None = None
    total_epochs: int | None = None
    global_batch_size: int | None = None
    run: str | None = None
    error: str | None = None

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
