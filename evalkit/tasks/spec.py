"""A task is data: a YAML file in `tasks/` (lm-evaluation-harness style) resolved into a `TaskSpec`.

Classnames and templates may be lists, `open_clip:NAME` (a list shipped by open_clip), or
`dataset` (read from the data folder: wds `classnames.txt` / `zeroshot_classification_templates.txt`).
The hash covers everything that changes a number, so results of an edited task are never mixed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from evalkit.errors import UserError


class TaskError(UserError, ValueError):
    """A task that cannot be resolved; the message names the file or the close names."""


@dataclass
class TaskSpec:
    name: str
    type: str
    dataset: str
    split: str = "test"
    classnames: list[str] | str | None = None
    templates: list[str] | str | None = None
    metrics: list[str] = field(default_factory=list)
    main_metric: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    data: dict[str, Any] | None = None  # identity of the data it was resolved against (fingerprint, size)
    limit: int | None = None  # `--limit N`: only the first N samples of the split (a smoke test), in the hash

    def resolved(self, data_classnames: list[str] | None = None, data_templates: list[str] | None = None,
                 data: dict[str, Any] | None = None) -> TaskSpec:
        """A copy with classnames and templates as concrete lists and the data's identity recorded.

        Its hash is the task's real identity: an edited `classnames.txt`, another open_clip template
        list or changed data files give another hash, so a resumed run computes the unit again.
        """
        return TaskSpec(
            name=self.name, type=self.type, dataset=self.dataset, split=self.split,
            classnames=_resolve_list(self.classnames, data_classnames, self, "classnames"),
            templates=_resolve_list(self.templates, data_templates, self, "templates"),
            metrics=list(self.metrics), main_metric=self.main_metric, options=dict(self.options), source=self.source,
            data=dict(data) if data is not None else None, limit=self.limit,
        )

    @property
    def is_resolved(self) -> bool:
        return self.data is not None

    def config(self) -> dict[str, Any]:
        keys = ("name", "type", "dataset", "split", "classnames", "templates", "metrics", "main_metric", "options")
        cfg = {k: getattr(self, k) for k in keys}
        if self.data is not None:
            cfg["data"] = self.data
        if self.limit is not None:  # absent when unset, so the hashes of whole-split tasks stay as they were
            cfg["limit"] = self.limit
        return cfg

    @property
    def hash(self) -> str:
        return hashlib.sha1(json.dumps(self.config(), sort_keys=True, default=str).encode()).hexdigest()[:12]


def open_clip_list(name: str) -> list[str]:
    """A list shipped by open_clip; template lambdas become `{c}` strings."""
    import open_clip

    obj = getattr(open_clip, name, None)
    if obj is None:
        raise TaskError(f"open_clip has no list named {name}.")
    return [t("{c}") if callable(t) else str(t) for t in obj]


def _resolve_list(value: list[str] | str | None, from_data: list[str] | None, spec: TaskSpec, what: str) -> list[str] | None:
    if value is None or isinstance(value, list):
        return value
    if value == "dataset":
        if not from_data:
            raise TaskError(f"task {spec.name} ({spec.source}): {what} come from the dataset, but the data folder has none.")
        return list(from_data)
    if value.startswith("open_clip:"):
        return open_clip_list(value.split(":", 1)[1])
    raise TaskError(f"task {spec.name} ({spec.source}): {what} must be a list, 'dataset' or 'open_clip:NAME', not {value!r}.")
