"""Train the tiny models of the micro grid with open_clip's own code, on CPU, deterministically.

The point is realism of the *artefacts*, not of the recipe's scale: models are `open_clip.CLIP`
built from a model-config JSON, trained with `open_clip.ClipLoss`, AdamW and open_clip_train's
cosine schedule, and saved exactly as open_clip_train saves them (`epoch_N.pt` with
`module.`-prefixed DDP keys and optimizer state, plus a sorted `params.txt`). evalkit's checkpoint
discovery, loading and zero-shot code therefore run on them unchanged.

Families plug in through `FAMILIES`: a builder (config dict -> module) and a loss (model, images,
tokens -> scalar). Adding MaMMUT is one `Family(...)` entry plus grid rows.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
from open_clip_train.scheduler import cosine_lr

from evalkit.atomic import atomic_write, atomic_write_text
from evalkit.embedded import world
from evalkit.embedded.grid import RunSpec, model_config_path

NUM_THREADS = 1  # fixed so results do not depend on the host; tiny matmuls gain little from more
POOL_SIZE = 3072  # distinct training images; epochs sample `samples_per_epoch` of them


def load_model_config(model: str) -> dict:
    return json.loads(model_config_path(model).read_text())


_REGISTERED: set[str] = set()


def register_config(model: str) -> None:
    """Make `open_clip.create_model(model)` / `get_tokenizer(model)` know a tiny config (idempotent)."""
    if model not in _REGISTERED:
        open_clip.add_model_config(model_config_path(model))
        _REGISTERED.add(model)


# ------------------------------------------------------------------------------------------ families


@dataclass(frozen=True)
class Family:
    build: Callable[[dict], torch.nn.Module]
    loss: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _build_clip(cfg: dict) -> torch.nn.Module:
    return open_clip.CLIP(**cfg, output_dict=True)


_CLIP_LOSS = open_clip.ClipLoss()


def _clip_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    out = model(images, tokens)
    return _CLIP_LOSS(out["image_features"], out["text_features"], out["logit_scale"])


def _build_mammut(cfg: dict) -> torch.nn.Module:
    from evalkit.models.families.mammut import MaMMUT

    return MaMMUT(cfg)


# (caption, contrastive) loss weights of the captioning families, as params.txt records them
LOSS_WEIGHTS: dict[str, tuple[float, float]] = {"mammut": (2.0, 1.0), "cap": (1.0, 0.0)}


def _mammut_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Contrastive + captioning, weighted as open_clip_train's CoCa defaults (clip 1, caption 2).

    The captioning softmax runs over the batch's own token ids (a sampled softmax) instead of all 49408:
    the world's captions use ~100 ids, and the full LM head made a step ~5x a tiny CLIP's. Exact
    CoCaLoss remains `model.coca_losses(...)` without `vocab`.
    """
    vocab = torch.unique(tokens)
    caption_w, clip_w = LOSS_WEIGHTS["mammut"]
    clip_loss, caption_loss = model.coca_losses(images, tokens, caption_loss_weight=caption_w, clip_loss_weight=clip_w,
                                                vocab=vocab)
    return clip_loss + caption_loss


def _cap_loss(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The paper's `cap` runs: MaMMUT's architecture trained with the captioning loss only (weight 1)."""
    caption_w, clip_w = LOSS_WEIGHTS["cap"]
    _, caption_loss = model.coca_losses(images, tokens, caption_loss_weight=caption_w, clip_loss_weight=clip_w,
                                        vocab=torch.unique(tokens))
    return caption_loss


FAMILIES: dict[str, Family] = {
    "clip": Family(build=_build_clip, loss=_clip_loss),
    "mammut": Family(build=_build_mammut, loss=_mammut_loss),
    "cap": Family(build=_build_mammut, loss=_cap_loss),
}


# ---------------------------------------------------------------------------------------------- data


@dataclass
class TrainPool:
    """Pre-rendered, pre-processed training split: images [N,3,S,S] and tokens [N,5,ctx]."""

    images: torch.Tensor
    tokens: torch.Tensor

    @classmethod
    def build(cls, model: str, n: int = POOL_SIZE) -> TrainPool:
        register_config(model)
        cfg = load_model_config(model)
        preprocess = open_clip.image_transform(cfg["vision_cfg"]["image_size"], is_train=False)
        tokenizer = open_clip.get_tokenizer(model)
        images, captions = [], []
        for s in world.iter_split("train", n):
            images.append(preprocess(s.image))
            captions.extend(s.captions)
        tokens = tokenizer(captions).view(n, 5, -1)
        return cls(torch.stack(images), tokens)


def pool_key(model: str) -> tuple[int, int]:
    """Pools can be shared between models with the same image size and context length."""
    cfg = load_model_config(model)
    return cfg["vision_cfg"]["image_size"], cfg["text_cfg"]["context_length"]


# ------------------------------------------------------------------------------------------ training


def _param_groups(model: torch.nn.Module, wd: float) -> list[dict]:
    """open_clip_train's split: no weight decay on gains, biases, embeddings' scale and logit_scale."""

    def exclude(n: str, p: torch.nn.Parameter) -> bool:
        return p.ndim < 2 or "bn" in n or "ln" in n or "bias" in n or "logit_scale" in n

    named = list(model.named_parameters())
    return [
        {"params": [p for n, p in named if exclude(n, p) and p.requires_grad], "weight_decay": 0.0},
        {"params": [p for n, p in named if not exclude(n, p) and p.requires_grad], "weight_decay": wd},
    ]


def params_txt(spec: RunSpec, home: Path) -> str:
    """`params.txt` as open_clip_train/main.py writes it: `name: value` for sorted argparse keys."""
    run_dir = spec.run_dir(home)
    args = {
        "accum_freq": 1, "batch_size": spec.batch_size, "beta1": 0.9, "beta2": 0.98,
        "checkpoint_path": str(run_dir / "checkpoints"), "dataset_type": "synthetic", "device": "cpu",
        "distributed": False, "epochs": spec.epochs, "eps": 1e-06, "family": spec.family,
        "force_quick_gelu": False, "grad_clip_norm": None, "local_loss": False, "log_path": str(run_dir / "out.log"),
        "logs": str(run_dir.parent), "lr": spec.lr, "lr_scheduler": "cosine", "model": spec.model,
        "name": spec.name, "precision": "fp32", "pretrained": "", "save_frequency": 1, "seed": spec.seed,
        "train_data": f"evalkit-embedded-world-v{world.WORLD_VERSION}:train",
        "train_num_samples": spec.samples_per_epoch, "val_data": None, "warmup": spec.warmup, "wd": spec.wd,
        "workers": 0, "world_size": 1,
    }
    if spec.family in LOSS_WEIGHTS:  # open_clip_train's --coca-*-loss-weight (a cap run: contrastive 0)
        args["coca_caption_loss_weight"], args["coca_contrastive_loss_weight"] = LOSS_WEIGHTS[spec.family]
    return "".join(f"{k}: {'' if v == '' else v}\n" for k, v in sorted(args.items()))


def train_run(spec: RunSpec, home: Path, pool: TrainPool, log: Callable[[str], None] = print) -> float:
    """Train one run, writing every epoch's checkpoint; returns wall seconds."""
    t0 = time.perf_counter()
    torch.set_num_threads(NUM_THREADS)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    register_config(spec.model)
    family = FAMILIES[spec.family]
    model = family.build(load_model_config(spec.model))
    model.train()
    optimizer = torch.optim.AdamW(_param_groups(model, spec.wd), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6)
    steps_per_epoch = spec.samples_per_epoch // spec.batch_size
    scheduler = cosine_lr(optimizer, spec.lr, spec.warmup, steps_per_epoch * spec.epochs)
    gen = torch.Generator().manual_seed(spec.seed)
    run_dir = spec.run_dir(home)
    atomic_write_text(run_dir / "params.txt", params_txt(spec, home))
    n = pool.images.shape[0]
    step = 0
    for epoch in range(spec.epochs):
        need = steps_per_epoch * spec.batch_size  # epochs larger than the pool wrap around it
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-need // n))])[:need]
        caption_pick = torch.randint(pool.tokens.shape[1], (order.numel(),), generator=gen)
        total = 0.0
        for b in range(steps_per_epoch):
            scheduler(step)
            sl = slice(b * spec.batch_size, (b + 1) * spec.batch_size)
            idx = order[sl]
            loss = family.loss(model, pool.images[idx], pool.tokens[idx, caption_pick[sl]])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            total += float(loss.detach())
            step += 1
        completed = epoch + 1
        ckpt = {
            "epoch": completed,
            "name": spec.name,
            "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
        }
        atomic_write(spec.checkpoint(completed, home), lambda p, c=ckpt: torch.save(c, p))
        log(f"[{spec.name}] epoch {completed}/{spec.epochs} loss {total / steps_per_epoch:.3f}")
    return time.perf_counter() - t0
