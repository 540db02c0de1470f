"""Text side shared by protocols: tokenize once per task, encode in large batches independent of
image batches, and let the family cut padding where that is exact (CLIP's causal EOT pooling)."""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch

from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext

_TOKENS: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_MAX_CACHED = 16


def tokenize_cached(lm: LoadedModel, texts: list[str]) -> torch.Tensor:
    """Token ids of `texts`, cached by (tokenizer kind, context length, texts): every checkpoint of a
    grid shares its tokenizer, so a task's prompts are tokenized once per run."""
    digest = hashlib.sha1("\0".join(texts).encode()).hexdigest()
    key = (type(lm.tokenizer).__qualname__, getattr(lm.tokenizer, "context_length", lm.context_length),
           lm.context_length, len(texts), digest)
    if key in _TOKENS:
        _TOKENS.move_to_end(key)
        return _TOKENS[key]
    tokens = lm.tokenizer(texts)
    _TOKENS[key] = tokens
    while len(_TOKENS) > _MAX_CACHED:
        _TOKENS.popitem(last=False)
    return tokens


@torch.no_grad()
def encode_texts(lm: LoadedModel, texts: list[str], ctx: RunContext) -> torch.Tensor:
    """Normalised float32 text features [len(texts), D]."""
    tokens = tokenize_cached(lm, texts)
    out = []
    for start in range(0, len(texts), ctx.text_batch_size):
        batch = tokens[start : start + ctx.text_batch_size].to(ctx.device, non_blocking=True)
        with ctx.autocast():
            feats = lm.encode_prompts(batch)
        out.append(feats.float())
    return torch.cat(out) if out else torch.empty(0)
