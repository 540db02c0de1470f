"""Image preprocessing split in two: uint8 pixels (decoded once, cached) and normalisation (on device).

The pixels are exactly open_clip's eval transform up to `ToTensor`, so `normalize(pixels)` equals
open_clip's preprocessed tensor bit for bit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image


@dataclass(frozen=True)
class PreprocessCfg:
    """The key by which the engine groups checkpoints and caches decoded images.

    `size`, `interpolation` and `resize_mode` decide the uint8 pixels (cached); `mean`/`std` are
    applied on the device, so checkpoints that differ only there share one cache.
    """

    size: int = 224
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @property
    def pixel_key(self) -> str:
        """What the uint8 pixels depend on (not mean/std)."""
        return f"{self.size}-{self.interpolation}-{self.resize_mode}"


def pixel_transform(cfg: PreprocessCfg) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> uint8 [3, S, S]: open_clip's eval transform without ToTensor/Normalize."""
    from open_clip.transform import PreprocessCfg as OCPreprocess
    from open_clip.transform import image_transform_v2
    from torchvision.transforms import Compose, PILToTensor

    full = image_transform_v2(
        OCPreprocess(size=cfg.size, mean=cfg.mean, std=cfg.std, interpolation=cfg.interpolation, resize_mode=cfg.resize_mode),
        is_train=False,
    )
    steps = list(full.transforms)
    names = [type(t).__name__ for t in steps[-2:]]
    if names != ["MaybeToTensor", "Normalize"] and names != ["ToTensor", "Normalize"]:
        raise RuntimeError(f"unexpected open_clip eval transform tail {names}; evalkit needs ToTensor+Normalize last")
    return Compose(steps[:-2] + [PILToTensor()])


_MEAN_STD: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_MEAN_STD_LOCK = threading.Lock()


def _mean_std(cfg: PreprocessCfg, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cfg's mean and std as float32 [1, 3, 1, 1] on `device`, built once per (mean, std, device).

    Building them per batch is two blocking host-to-device copies, which stall the CPU until the
    previous forward is done and so defeat every read-ahead. The cached tensors are never written to.
    """
    key = (tuple(cfg.mean), tuple(cfg.std), device)
    hit = _MEAN_STD.get(key)
    if hit is None:
        with _MEAN_STD_LOCK:
            hit = _MEAN_STD.get(key)
            if hit is None:
                # Plain tensors even when first asked for under inference_mode, so later callers in
                # any grad mode can use them. A blocking copy, so complete before any stream reads it.
                with torch.inference_mode(False):
                    mean = torch.tensor(cfg.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
                    std = torch.tensor(cfg.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
                if len(_MEAN_STD) >= 64:  # a handful of configs per run; never grow without bound
                    _MEAN_STD.clear()
                _MEAN_STD[key] = hit = (mean, std)
    return hit


def normalize(pixels: torch.Tensor, cfg: PreprocessCfg, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 [B, 3, S, S] (on any device) -> normalised float, as ToTensor + Normalize compute it.

    mean/std live on the device after the first call for a (mean, std, device): no host-to-device
    copy per batch, so an asynchronous pixel copy stays asynchronous.
    """
    mean, std = _mean_std(cfg, pixels.device)
    x = pixels.to(torch.float32).div(255).sub(mean).div(std)
    return x.to(dtype)
