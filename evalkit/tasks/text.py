"""Text side shared by protocols: tokenize once per task, encode each distinct text once, in
batches of similar length, so the family can cut padding per batch where that is exact (CLIP's
causal EOT pooling). Caption sets repeat themselves (COCO has identical captions for different
images) and prompt lengths vary 3x, so both save real work without changing a feature."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import types
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

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


# key -> (tokenizer, plan): the entry holds its tokenizer, so an identity keyed by `id()` stays valid
_PLANS: OrderedDict[tuple, tuple[Any, TextPlan]] = OrderedDict()
_IDENTITIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_SCALARS = (str, int, float, bool, bytes, type(None))


def tokenizer_identity(tok: Any) -> str:
    """What a tokenizer turns text into, as a key: a hash of its vocabulary, merges, special tokens,
    cleaning and context length, so equal tokenizers share cached plans and different ones never do
    (two tokenizers of one class and context length with other vocabularies tokenize differently).
    A tokenizer whose content can't be read (a plain function, an unknown object) is keyed by identity.
    Computed once per tokenizer object (~0.05 s for CLIP's 49k-merge BPE)."""
    with contextlib.suppress(KeyError, TypeError):
        return _IDENTITIES[tok]
    h = hashlib.sha1()
    ident = f"content:{h.hexdigest()}" if _feed(h, tok, depth=0) else f"id:{type(tok).__qualname__}:{id(tok)}"
    with contextlib.suppress(TypeError):  # not weak-referenceable: recomputed next time
        _IDENTITIES[tok] = ident
    return ident


def _feed(h: Any, v: Any, depth: int) -> bool:
    """Feed a stable, unambiguous description of `v` into hash `h`; False where `v`'s content is opaque."""
    if isinstance(v, _SCALARS):
        r = repr(v)
        h.update(f"{type(v).__name__}{len(r)}:{r}".encode())
        return True
    if isinstance(v, dict):  # vocabularies, merge ranks: in their (deterministic) construction order
        if _plain(v) and _plain(v.values()):  # fast path (49k-entry vocabularies): repr is exact for these
            h.update(f"dict{len(v)}:{v!r}".encode())
            return True
        h.update(f"dict{len(v)}(".encode())
        return all(_feed(h, k, depth) and _feed(h, x, depth) for k, x in v.items())
    if isinstance(v, (list, tuple)):
        if _plain(v):
            h.update(f"{type(v).__name__}{len(v)}:{v!r}".encode())
            return True
        h.update(f"{type(v).__name__}{len(v)}(".encode())
        return all(_feed(h, x, depth) for x in v)
    if isinstance(v, functools.partial):
        h.update(b"partial(")
        return _feed(h, v.func, depth) and _feed(h, v.args, depth) and _feed(h, v.keywords, depth)
    if hasattr(v, "backend_tokenizer"):  # a Hugging Face fast tokenizer: its full JSON holds vocab and rules
        h.update(b"hf-fast(")
        spec = json.loads(v.backend_tokenizer.to_str())
        for per_call in ("truncation", "padding"):  # set anew by every call (max_length, padding): not identity
            spec.pop(per_call, None)
        _feed(h, json.dumps(spec, sort_keys=True), depth)
        return _feed(h, _hf_settings(v, with_path=False), depth)  # a copy elsewhere is the same tokenizer
    if hasattr(v, "get_vocab") and hasattr(v, "all_special_ids"):  # a slow Hugging Face tokenizer
        h.update(f"hf-slow({type(v).__module__}.{type(v).__qualname__}".encode())
        return _feed(h, v.get_vocab(), depth) and _feed(h, _hf_settings(v, with_path=True), depth)
    if hasattr(v, "pattern") and hasattr(v, "flags"):  # a compiled re / regex pattern
        return _feed(h, ("pattern", v.pattern, int(v.flags)), depth)
    if isinstance(v, types.MethodType):  # a bound method: its function and its object
        h.update(f"method({getattr(v, '__qualname__', '')}".encode())
        return _feed(h, v.__self__, depth + 1)
    if isinstance(v, (types.FunctionType, types.BuiltinFunctionType)):
        # a module-level function (e.g. a clean_fn) is its name; a closure or lambda is opaque
        if getattr(v, "__closure__", None) or "<lambda>" in getattr(v, "__qualname__", "<lambda>"):
            return False
        h.update(f"fn({getattr(v, '__module__', '')}.{getattr(v, '__qualname__', '')})".encode())
        return True
    if depth < 2 and hasattr(v, "__dict__"):  # a tokenizer object (open_clip's): its class and attributes
        h.update(f"obj({type(v).__module__}.{type(v).__qualname__}".encode())
        attrs = {k: x for k, x in vars(v).items() if k != "cache"}  # `cache`: memoised results, grows with use
        return _feed(h, sorted(attrs), depth) and all(_feed(h, attrs[k], depth + 1) for k in sorted(attrs))
    return False


def _plain(items: Any) -> bool:
    """Whether every item is a scalar or a tuple of scalars (checked at C speed)."""
    kinds = set(map(type, items))
    if tuple in kinds:
        kinds.discard(tuple)
        kinds |= set(map(type, itertools.chain.from_iterable(x for x in items if type(x) is tuple)))
    return kinds <= set(_SCALARS)


def _hf_settings(tok: Any, with_path: bool) -> dict[str, Any]:
    """A Hugging Face tokenizer's settings outside its vocabulary (a slow one's rules live in its files)."""
    keys = ("name_or_path",) * with_path + (
        "padding_side", "truncation_side", "model_max_length", "all_special_ids",
        "pad_token_id", "eos_token_id", "bos_token_id", "sep_token_id", "cls_token_id", "unk_token_id")
    return {k: getattr(tok, k, None) for k in keys}


def _length(tokens: torch.Tensor, pooling: str) -> torch.Tensor:
    """Position of the last real token: the EOT (largest id) for CLIP-style, else non-padding count."""
    if pooling == "eot":
        return tokens.argmax(dim=-1)
    return (tokens != 0).sum(dim=-1)


def text_plan(lm: LoadedModel, texts: list[str]) -> TextPlan:
    """The token plan of `texts`, cached by (tokenizer identity, context length, pooling, texts): every
    checkpoint of a grid shares its tokenizer, so a task's prompts are tokenized and planned once per run."""
    digest = hashlib.sha1("\0".join(texts).encode()).hexdigest()
    key = (tokenizer_identity(lm.tokenizer), lm.context_length, lm.text_pooling, len(texts), digest)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key][1]
    first: dict[str, int] = {}
    slot_of_text = [first.setdefault(t, len(first)) for t in texts]
    distinct = list(first)
    tokens = lm.tokenizer(distinct) if distinct else torch.empty(0, lm.context_length, dtype=torch.long)
    order = torch.argsort(_length(tokens, lm.text_pooling), stable=True)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    plan = TextPlan(tokens=tokens[order].contiguous(), slot=rank[torch.tensor(slot_of_text, dtype=torch.long)])
    _PLANS[key] = (lm.tokenizer, plan)
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
