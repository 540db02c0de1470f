"""A minimal, self-contained open_clip zero-shot check for the embedded checkpoints.

Independent of evalkit's task code on purpose: it is the reference the build and tests use to
prove the tiny models learned something, so it must not share bugs with the code under test.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch
from torchvision.datasets import ImageFolder

from evalkit.embedded import world
from evalkit.embedded.grid import RunSpec
from evalkit.embedded.paths import data_root
from evalkit.embedded.train import FAMILIES, NUM_THREADS, load_model_config, register_config


def load_checkpoint_model(spec: RunSpec, epoch: int, home: Path | None = None) -> torch.nn.Module:
    """The family's builder (open_clip for CLIP) + the training checkpoint with DDP `module.` prefixes stripped."""
    register_config(spec.model)
    model = FAMILIES[spec.family].build(load_model_config(spec.model))
    ckpt = torch.load(spec.checkpoint(epoch, home), map_location="cpu", weights_only=True)
    sd = {k.removeprefix("module."): v for k, v in ckpt["state_dict"].items()}
    model.load_state_dict(sd)
    return model.eval()


@torch.no_grad()
def zeroshot_accuracy(model: torch.nn.Module, model_name: str, root: Path | None = None) -> float:
    """Top-1 on the held-out ImageNet-layout test folder; templates averaged, features normalized."""
    torch.set_num_threads(NUM_THREADS)
    register_config(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    size = load_model_config(model_name)["vision_cfg"]["image_size"]
    preprocess = open_clip.image_transform(size[0] if isinstance(size, tuple) else size, is_train=False)
    ds = ImageFolder(str((root or data_root()) / "imagenet_folder" / "val"), transform=preprocess)
    weights = []
    for c in world.CLASSNAMES:
        emb = model.encode_text(tokenizer([t.format(c=c) for t in world.TEMPLATES]), normalize=True)
        weights.append(torch.nn.functional.normalize(emb.mean(0), dim=-1))
    classifier = torch.stack(weights, dim=1)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = torch.tensor(ds.targets)
    feats = model.encode_image(images, normalize=True)
    return float(((feats @ classifier).argmax(1) == labels).float().mean())
