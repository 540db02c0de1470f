"""The text side encodes each distinct text once, in length-sorted batches cut to their longest
prompt, and gives every text the features the untouched 77-token `encode_text` gives it."""

from __future__ import annotations

import pytest
import torch
from _embedded import trained_checkpoint

from evalkit.models.factory import load_model
from evalkit.models.spec import ModelSpec
from evalkit.tasks.base import RunContext
from evalkit.tasks.text import encode_texts, text_plan

TEXTS = [
    "a photo of a red circle.",
    "a large blue square drawn on a noisy textured background in the middle of the picture.",
    "a photo of a red circle.",  # duplicate of text 0
    "square",
    "an image of a small green triangle near the top left corner.",
    "square",  # duplicate of text 3
    "a drawing of a star.",
    "",
]


def _ctx(text_batch_size: int) -> RunContext:
    import contextlib

    return RunContext(device=torch.device("cpu"), autocast=contextlib.nullcontext, text_batch_size=text_batch_size)


@pytest.mark.parametrize("run", ["tinyclip-S_s2k", "mammut-tiny-S_s4k"])
@pytest.mark.parametrize("text_batch_size", [2, 1024])
def test_features_equal_full_encode_text(run: str, text_batch_size: int) -> None:
    ckpt, cfg = trained_checkpoint(run)
    lm = load_model(ModelSpec(model=str(cfg), pretrained=str(ckpt)))
    ours = encode_texts(lm, TEXTS, _ctx(text_batch_size))
    with torch.no_grad():
        full = lm.model.encode_text(lm.tokenizer(TEXTS), normalize=True)
    assert ours.shape == full.shape
    torch.testing.assert_close(ours, full, atol=1e-6, rtol=0)
    assert torch.equal(ours[0], ours[2]) and torch.equal(ours[3], ours[5])
    assert not torch.allclose(ours[0], ours[3], atol=1e-3)  # distinct texts stay distinct


def test_plan_dedupes_and_sorts_by_length() -> None:
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    lm = load_model(ModelSpec(model=str(cfg), pretrained=str(ckpt)))
    plan = text_plan(lm, TEXTS)
    assert len(plan.tokens) == 6  # 8 texts, 2 repeats
    eot = plan.tokens.argmax(dim=-1)
    assert eot.tolist() == sorted(eot.tolist())
    tokens = lm.tokenizer(TEXTS)
    assert torch.equal(plan.tokens[plan.slot], tokens)  # every text finds its own tokens back


def test_short_batches_run_short(monkeypatch) -> None:
    """The work saved is real: with batches of 2, the CLIP text tower sees widths by length bucket."""
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    lm = load_model(ModelSpec(model=str(cfg), pretrained=str(ckpt)))
    widths: list[int] = []
    forward = lm.model.transformer.forward

    def spy(x, *a, **k):
        widths.append(x.shape[1])
        return forward(x, *a, **k)

    monkeypatch.setattr(lm.model.transformer, "forward", spy)
    encode_texts(lm, TEXTS, _ctx(2))
    eot = lm.tokenizer(list(dict.fromkeys(TEXTS))).argmax(dim=-1).sort().values
    assert widths == [int(eot[i : i + 2].max()) + 1 for i in range(0, len(eot), 2)]
    assert widths[0] < widths[-1] < lm.context_length
