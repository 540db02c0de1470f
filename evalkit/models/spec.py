"""What identifies a model to evaluate: the source to load it from and the facts the table records."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from evalkit.errors import UsageError
from evalkit.models.source import parse_source

PREPROCESS_KEYS = ("size", "mean", "std", "interpolation", "resize_mode")
INTERPOLATIONS = ("bicubic", "bilinear")  # what open_clip's eval transform takes
RESIZE_MODES = ("shortest", "longest", "squash")
COLUMN = {"column": True}  # dataclass field metadata: this ModelSpec field is a results-table column


def check_preprocess(value: Any, where: str) -> dict[str, Any]:
    """A `preprocess:` mapping validated and normalised (tuples of floats, int size); errors name `where`,
    the key and what is allowed."""
    if not isinstance(value, dict):
        raise UsageError(f"{where}: preprocess must be a mapping with keys among {', '.join(PREPROCESS_KEYS)}.")
    out: dict[str, Any] = {}
    for key, v in value.items():
        if key not in PREPROCESS_KEYS:
            raise UsageError(f"{where}: unknown preprocess key '{key}' (allowed: {', '.join(PREPROCESS_KEYS)}).")
        if v is None:
            continue
        if key in ("mean", "std"):
            if (not isinstance(v, (list, tuple)) or len(v) != 3
                    or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                raise UsageError(f"{where}: preprocess {key} must be 3 numbers (R, G, B), got {v!r}.")
            if key == "std" and any(x <= 0 for x in v):
                raise UsageError(f"{where}: preprocess std must be positive, got {v!r}.")
            out[key] = tuple(float(x) for x in v)
        elif key == "size":
            if isinstance(v, (list, tuple)) and len(v) == 2 and v[0] == v[1]:
                v = v[0]
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise UsageError(f"{where}: preprocess size must be a positive integer (square images), got {v!r}.")
            out[key] = v
        else:
            allowed = INTERPOLATIONS if key == "interpolation" else RESIZE_MODES
            if v not in allowed:
                raise UsageError(f"{where}: preprocess {key} must be one of {', '.join(allowed)}, got {v!r}.")
            out[key] = v
    return out


@dataclass
class ModelSpec:
    """One checkpoint to evaluate.

    `model` is what the user gave: an architecture name, `hf-hub:ORG/REPO`, `local-dir:DIR` or a
    model-config JSON path; `pretrained` a tag, a weights file, a `hf-hub-file:` reference or None
    (random init): see evalkit/models/source.py. `preprocess` (from a zoo entry's `preprocess:`) overrides
    the image preprocessing the checkpoint's config implies: `PREPROCESS_KEYS`.

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
    # the grid identity: each field marked COLUMN is a column of the results table, in this order
    # (evalkit/results/schema.py reads them from here; adding one is one line)
    epoch: int | None = field(default=None, metadata=COLUMN)
    samples_seen: float | None = field(default=None, metadata=COLUMN)
    pretrain_dataset: str | None = field(default=None, metadata=COLUMN)
    lr_scheduler: str | None = field(default=None, metadata=COLUMN)
    namespace: str | None = field(default=None, metadata=COLUMN)
    model_simple: str | None = field(default=None, metadata=COLUMN)
    samples_seen_scale_pretty: str | None = field(default=None, metadata=COLUMN)
    total_epochs: int | None = field(default=None, metadata=COLUMN)
    global_batch_size: int | None = field(default=None, metadata=COLUMN)
    run: str | None = field(default=None, metadata=COLUMN)
    extra: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    preprocess: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.model if not self.pretrained else f"{self.model}:{self.pretrained}"

    @property
    def checkpoint(self) -> str:
        """The weights' identity for the table: file path, hub id, or tag."""
        if parse_source(self.model).includes_weights:
            return self.model
        return self.pretrained or ""

    @property
    def key(self) -> str:
        """Stable identity of the unit's model side (used for resume and sharding)."""
        return f"{self.model}|{self.pretrained or ''}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# The ModelSpec fields that are results-table columns, in order: the one declaration of the grid identity.
SPEC_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ModelSpec) if f.metadata.get("column"))
