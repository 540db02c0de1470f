"""Text side shared by protocols: tokenize once per task, encode each distinct text once, in
batches of similar length, so the family can cut padding per batch where that is exact (CLIP's
causal EOT pooling). Caption sets repeat themselves (COCO has identical captions for different
images) and prompt lengths vary 3x, so both save real work without changing a feature."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import torch

from evalkit.models.family import LoadedModel
from evalkit.tasks.base import RunContext

_MAX_CACHED = 16


@dataclass(frozen=True)
class TextPlan:
    """Distinct texts in encoding order, and how to put their features back.

    `tokens[j]` is the j-th distinct text in length order; text `i` of the task has the features
    of `tokens[slot[i]]`.
    """

    tokens: torch.Tensor
    slot: torch.Tensor


_PLANS: OrderedDict[tuple, TextPlan] = OrderedDict()


def _length(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """Position of the last real token: the EOT (largest id) for CLIP-style, else non-padding count."""
    if pooling == "eot":
        return tokens.argmax(dim=-1)
    return (tokens != 0).sum(dim=-1)


def text_plan(lm: LoadedModel, texts: list[str]) -> TextPlan:
    """The token plan of `texts`, cached by (tokenizer kind, context length, texts): every checkpoint
    of a grid shares its tokenizer, so a task's prompts are tokenized and planned once per run."""
    digest = hashlib.sha1("\0".join(texts).encode()).hexdigest()
    key = (type(lm.tokenizer).__qualname__, getattr(lm.tokenizer, "context_length", lm.context_length),
           lm.context_length, lm.text_pooling, len(texts), digest)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    first: dict[str, int] = {}
    slot_of_text = [first.setdefault(t, len(first)) for t in texts]
    distinct = list(first)
    tokens = lm.tokenizer(distinct) if distinct else torch.empty(0, lm.context_length, dtype=torch.long)
    order = torch.argsort(_length(tokens, lm.text_pooling), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    plan = TextPlan(tokens=tokens[order].contiguous(), slot=rank[torch.tensor(slot_of_text, dtype=torch.long)])
    _PLANS[key] = plan
    while len(_PLANS) > _MAX_CACHED:
        _PLANS.popitem(last=False)
    return plan


@torch.no_grad()
def encode_texts(lm: LoadedModel, texts: list[str], ctx: RunContext) -> torch.Tensor:
    """Normalised float32 text features [len(texts), D], in the order of `texts`."""
    if not texts:
        return torch.empty(0)
    plan = text_plan(lm, texts)
    out = []
    for start in range(0, len(plan.tokens), ctx.text_batch_size):
        batch = plan.tokens[start : start + ctx.text_batch_size].to(ctx.device, non_blocking=True)
        with ctx.autocast():
            feats = lm.encode_prompts(batch)
        out.append(feats.float())
    return torch.cat(out)[plan.slot.to(out[0].device)]
