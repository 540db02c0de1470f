"""The contract between the engine and a task protocol.

The engine owns images and models; a protocol builds its text side once per checkpoint, consumes
image features batch by batch, and returns metrics. New protocols register with `@register_protocol`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from evalkit.data.sources import ImageSource
from evalkit.models.family import LoadedModel
from evalkit.tasks.spec import TaskSpec

PROTOCOLS: dict[str, type[TaskRunner]] = {}


@dataclass
class RunContext:
    """How to compute: device, autocast, batch sizes."""

    device: torch.device
    autocast: Callable[[], AbstractContextManager]
    text_batch_size: int = 1024


@dataclass
class TaskResult:
    metrics: dict[str, float]
    n_samples: int
    samples: Any = None  # optional per-sample pandas DataFrame
    extra: dict[str, Any] = field(default_factory=dict)


class TaskRunner:
    """One task on one checkpoint. `needs` says which image readout the engine must compute."""

    needs: ClassVar[str] = "image_features"  # or "patch_tokens"

    def __init__(self, spec: TaskSpec, source: ImageSource) -> None:
        self.spec, self.source = spec, source

    def prepare(self, lm: LoadedModel, ctx: RunContext) -> None:
        raise NotImplementedError

    def update(self, index: torch.Tensor, features: torch.Tensor) -> None:
        raise NotImplementedError

    def result(self, log_samples: bool = False) -> TaskResult:
        raise NotImplementedError


def register_protocol(name: str) -> Callable[[type[TaskRunner]], type[TaskRunner]]:
    def deco(cls: type[TaskRunner]) -> type[TaskRunner]:
        PROTOCOLS[name] = cls
        return cls

    return deco
