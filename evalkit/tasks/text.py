"""Text side shared by protocols: tokenize once, encode in large batches independent of image batches."""

from __future__ import annotations

import torch

from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext


@torch.no_grad()
def encode_texts(lm: LoadedModel, texts: list[str], ctx: RunContext) -> torch.Tensor:
    """Normalised float32 text features [len(texts), D]."""
    tokens = lm.tokenizer(texts)
    out = []
    for start in range(0, len(texts), ctx.text_batch_size):
        batch = tokens[start : start + ctx.text_batch_size].to(ctx.device, non_blocking=True)
        with ctx.autocast():
            feats = lm.encode_text(batch)
        out.append(feats.float())
    return torch.cat(out) if out else torch.empty(0)
