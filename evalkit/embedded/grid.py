"""The micro scaling grid trained on the embedded world.

Plain data (no torch) so it can be mirrored into `checkpoints.yaml` and read by the CLI cheaply:
every run is one open_clip training run; its epochs give the intermediate checkpoints whose
samples-seen values feed the scaling fits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from evalkit.embedded.paths import runs_root


@dataclass(frozen=True)
class RunSpec:
    """One training run. `family` picks the model builder + loss in `train.py`."""

    name: str
    family: str  # "clip" (ClipLoss); "mammut" (contrastive + captioning); "cap" (captioning only)
    model: str  # open_clip model-config name, file `evalkit/models/model_configs/<model>.json`
    samples_per_epoch: int  # open_clip's train_num_samples
    epochs: int
    batch_size: int = 64
    lr: float = 2e-3
    warmup: int = 10  # steps
    wd: float = 0.1
    seed: int = 0

    def as_dict(self) -> dict[str, str | int | float]:
        return asdict(self)

    def samples_seen(self, epoch: int) -> int:
        """Samples seen after `epoch` epochs (what the scaling fits use as data/compute axis)."""
        steps = self.samples_per_epoch // self.batch_size
        return epoch * steps * self.batch_size

    def run_dir(self, home: Path | None = None) -> Path:
        return runs_root(home) / self.name

    def checkpoint(self, epoch: int, home: Path | None = None) -> Path:
        return self.run_dir(home) / "checkpoints" / f"epoch_{epoch}.pt"

    def checkpoints(self, home: Path | None = None) -> list[Path]:
        return [self.checkpoint(e, home) for e in range(1, self.epochs + 1)]


# lr per size: the wider model diverges early at the small model's lr (measured, see docs/embedded.md).
GRID: tuple[RunSpec, ...] = (
    RunSpec("tinyclip-S_s2k", "clip", "tinyclip-S", samples_per_epoch=2048, epochs=4, lr=5e-3),
    RunSpec("tinyclip-S_s4k", "clip", "tinyclip-S", samples_per_epoch=4096, epochs=4, lr=5e-3),
    RunSpec("tinyclip-M_s2k", "clip", "tinyclip-M", samples_per_epoch=2048, epochs=4, lr=2e-3),
    RunSpec("tinyclip-M_s4k", "clip", "tinyclip-M", samples_per_epoch=4096, epochs=4, lr=2e-3),
    # MaMMUT beside the CLIPs: contrastive + captioning loss (one budget only: a step costs ~2x a tiny
    # CLIP's). 8 epochs: its decoder reads the image only after ~300 steps at a high lr (at 4 epochs the
    # cosine schedule decayed first, and its generative zero-shot stayed at chance; docs/embedded.md).
    RunSpec("mammut-tiny-S_s4k", "mammut", "mammut_tiny-S", samples_per_epoch=4096, epochs=8, lr=2e-3),
    # The paper's `cap` runs: MaMMUT's architecture, captioning loss only (no contrastive head to evaluate).
    RunSpec("cap-tiny-S_s4k", "cap", "mammut_tiny-S", samples_per_epoch=4096, epochs=8, lr=5e-3),
)


def get_run(name: str) -> RunSpec:
    for spec in GRID:
        if spec.name == name:
            return spec
    raise KeyError(f"unknown embedded run {name!r}; known: {[s.name for s in GRID]}")


def model_config_path(model: str) -> Path:
    """The open_clip model-config JSON for a tiny architecture (shipped as package data)."""
    return Path(__file__).resolve().parents[1] / "models" / "model_configs" / f"{model}.json"
