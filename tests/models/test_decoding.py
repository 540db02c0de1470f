"""The captioning-decoder hooks (evalkit/models/decoding.py) against references computed here.

References: the model's own full forward (evalkit's MaMMUT `caption_logits`, open_clip's `CoCa.forward`)
followed by a plain full-vocabulary log-softmax and a loop over target positions, one sequence at a
time; and the fork oracle's captioning logits on micro-A (tests/fixtures/mammut-fork/micro-A).
"""

from __future__ import annotations

import json

import pytest
import torch
from _util import fixture_path

from evalkit.models.decoding import plan_sequences
from evalkit.models.family import NoCaptioner, NoContrastiveHead

MICRO = fixture_path("mammut-fork", "micro-A")
SOT, EOT = 49406, 49407


def _reference(logits: torch.Tensor, tokens: torch.Tensor) -> float:
    """sum_{j>=1, token j not a pad} log_softmax(logits[j-1])[token j]: a loop over positions."""
    lp = logits.double().log_softmax(dim=-1)
    total = 0.0
    for j in range(1, tokens.shape[0]):
        if int(tokens[j]) != 0:
            total += float(lp[j - 1, int(tokens[j])])
    return total


@pytest.fixture(scope="module")
def micro():
    from evalkit.models.factory import load_model

    lm = load_model(str(MICRO / "mammut_micro-A.json"), pretrained=str(MICRO / "epoch_3.pt"))
    inputs = torch.load(MICRO / "inputs.pt", weights_only=True)
    return lm, inputs["images"]


def _prompts(lm) -> torch.Tensor:
    """Prompts sharing template prefixes (so chunks share leading positions), of unequal lengths."""
    classes = ["dog", "red circle", "a very long class name with many words", "cat", "x"]
    templates = ["a photo of a {c}.", "a bad photo of the {c}", "{c}", "itap of my {c}!"]
    return lm.tokenizer([t.format(c=c) for c in classes for t in templates])


def _mammut_reference(lm, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    out = torch.empty(images.shape[0], tokens.shape[0], dtype=torch.float64)
    with torch.no_grad():
        img_tokens = lm.model.image_tokens(images)
        for i in range(images.shape[0]):
            for p in range(tokens.shape[0]):
                logits = lm.model.caption_logits(img_tokens[i:i + 1], tokens[p:p + 1])[0]  # all 77 positions
                out[i, p] = _reference(logits, tokens[p])
    return out


@pytest.mark.parametrize("prompt_batch_size", [1, 3, 64])
def test_mammut_scores_equal_the_plain_loop(micro, prompt_batch_size: int) -> None:
    lm, images = micro
    tokens = _prompts(lm)
    want = _mammut_reference(lm, images, tokens)
    with torch.no_grad():
        ctx = lm.caption_context(images)
        got = lm.caption_scores(ctx, tokens, prompt_batch_size=prompt_batch_size)
    assert got.shape == (4, tokens.shape[0]) and got.dtype == torch.float32
    assert torch.allclose(got.double(), want, atol=2e-4, rtol=1e-5), (got.double() - want).abs().max()
    # the plan is reusable and found shared prefixes (chunks of one template's prompts)
    plan = lm.plan_sequences(tokens, prompt_batch_size)
    assert torch.equal(lm.caption_scores(ctx, plan), got)
    if prompt_batch_size == 3:
        assert max(c.prefix for c in plan.chunks) >= 5  # SOT a photo of a


def test_mammut_scores_match_the_fork_oracle(micro) -> None:
    """Captions 0..3 of the oracle against images 0..3 (the pairs the fork scored): the log-probs
    from the fork's own logits (`caption_logits_selected` - `caption_logsumexp`)."""
    lm, images = micro
    expected = torch.load(MICRO / "expected.pt", weights_only=True)
    tokens = torch.load(MICRO / "tokens.pt", weights_only=True)[:4]
    vocab = expected["caption_vocab_idx"].tolist()
    col = {t: i for i, t in enumerate(vocab)}
    want = torch.zeros(4, dtype=torch.float64)
    for i in range(4):
        for j in range(1, 77):
            t = int(tokens[i, j])
            if t:
                want[i] += float(expected["caption_logits_selected"][i, j - 1, col[t]] - expected["caption_logsumexp"][i, j - 1])
    with torch.no_grad():
        ctx = lm.caption_context(images)
        aligned = lm.caption_log_likelihood(ctx, tokens)
        full = lm.caption_scores(ctx, tokens)
    assert torch.allclose(aligned.double(), want, atol=2e-4), (aligned, want)
    assert torch.allclose(full.diagonal().double(), want, atol=2e-4)


def test_aligned_pairs_equal_the_cross_product(micro) -> None:
    lm, images = micro
    tokens = _prompts(lm)[:8]
    with torch.no_grad():
        ctx = lm.caption_context(images)
        full = lm.caption_scores(ctx, tokens)
        pairs = torch.tensor([0, 5, 2, 7])
        aligned = lm.caption_log_likelihood(ctx, tokens[pairs], batch_size=3)
    assert torch.allclose(aligned, full[torch.arange(4), pairs], atol=1e-4)


def test_prior_is_the_forks_imagefree_forward(micro) -> None:
    """The branch's prior: `model.forward(image=None, image_embs=None, text=t)` on the fork runs the text
    tower without causal mask and without cross-attention on t[:, :-1]: evalkit's `model.text(t[:, :-1])`
    is exactly that pass; the prior then depends on the cut (pads are read)."""
    lm, _ = micro
    tokens = _prompts(lm)
    cut = int((tokens != 0).sum(1).max())
    toks = tokens[:, :cut]
    with torch.no_grad():
        logits = lm.model.text(toks[:, :-1]) @ lm.model.text.text_projection
        want = torch.tensor([_reference(torch.cat([logits[p], logits[p, :1]]), toks[p]) for p in range(len(toks))])
        got = lm.caption_prior(toks, prompt_batch_size=7)
        longer = lm.caption_prior(tokens[:, :cut + 3])
    assert torch.allclose(got.double(), want.double(), atol=2e-4)
    assert (longer - got).abs().max() > 1e-3  # bidirectional: more pads, another prior (the quirk)


def test_plan_prefixes() -> None:
    t = torch.tensor([[SOT, 1, 2, 3, EOT, 0], [SOT, 1, 2, 4, 5, EOT], [SOT, 1, 2, EOT, 0, 0], [SOT, 9, EOT, 0, 0, 0]])
    plan = plan_sequences(t, prompt_batch_size=3)
    assert [c.index.tolist() for c in plan.chunks] == [[0, 1, 2], [3]]  # lexicographic: the EOT (49407) sorts after ids 3, 4
    assert plan.chunks[0].prefix == 3 and plan.chunks[0].tokens.shape == (3, 6)
    assert plan.chunks[1].prefix == 2 and plan.chunks[1].tokens.shape == (1, 3)  # one prompt: all but its EOT


def _tiny_coca():
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CoCa(
        embed_dim=16,
        multimodal_cfg={"context_length": 76, "width": 16, "heads": 2, "layers": 2},
        text_cfg={"context_length": 76, "width": 16, "heads": 2, "layers": 2, "embed_cls": True, "output_tokens": True},
        vision_cfg={"image_size": 32, "patch_size": 16, "width": 32, "layers": 1, "head_width": 16,
                    "attentional_pool": True, "attn_pooler_heads": 2, "attn_pooler_queries": 8, "output_tokens": True},
    ).eval()
    with torch.no_grad():  # off the zero init of the LM head, so scores differ between prompts
        model.text_decoder.text_projection.normal_(std=0.5)
    return model


def test_coca_scores_equal_open_clips_forward() -> None:
    from evalkit.data.preprocess import PreprocessCfg
    from evalkit.models.families.clip import CLIPFamily
    from evalkit.models.family import LoadedModel

    model = _tiny_coca()
    tok = CLIPFamily.tokenizer("coca", {"text_cfg": {"context_length": 76}})
    lm = LoadedModel(model=model, family="clip", arch="tiny-coca", preprocess=PreprocessCfg(size=32),
                     tokenizer=tok, context_length=76, text_pooling="eot")
    assert lm.has_captioner and lm.has_contrastive
    tokens = tok(["a photo of a dog.", "a photo of a cat", "a bad photo of a tiny red circle", "dog"])
    images = torch.randn(3, 3, 32, 32)
    want = torch.empty(3, 4, dtype=torch.float64)
    with torch.no_grad():
        for i in range(3):
            for p in range(4):
                out = model(images[i:i + 1], tokens[p:p + 1])  # logits for tokens[:, :-1], labels tokens[:, 1:]
                logits = torch.cat([out["logits"][0], out["logits"][0, :1]])
                want[i, p] = _reference(logits, tokens[p])
        ctx = lm.caption_context(images)
        got = lm.caption_scores(ctx, tokens, prompt_batch_size=2)
        aligned = lm.caption_log_likelihood(ctx, tokens[:3])
    assert torch.allclose(got.double(), want, atol=2e-4), (got, want)
    assert torch.allclose(aligned.double(), want[torch.arange(3), torch.arange(3)], atol=2e-4)
    assert want.std() > 0.1  # a real spread of scores, not a degenerate model


def test_clip_has_no_captioner_and_cap_no_contrastive_head() -> None:
    from _util import tiny_clip

    from evalkit.data.preprocess import PreprocessCfg
    from evalkit.models.families.mammut import CapFamily
    from evalkit.models.family import LoadedModel, get_family

    clip = LoadedModel(model=tiny_clip(), family="clip", arch="tinyclip-S", preprocess=PreprocessCfg(size=32),
                       tokenizer=lambda t: torch.zeros(len(t), 77, dtype=torch.long), context_length=77, text_pooling="eot")
    assert not clip.has_captioner and clip.has_contrastive
    with pytest.raises(NoCaptioner, match=r"tinyclip-S \(family clip\) has no captioning decoder"):
        clip.caption_context(torch.zeros(1, 3, 32, 32))
    assert get_family("cap") is CapFamily
    cfg = json.loads((MICRO / "config.json").read_text())
    cap = LoadedModel(model=CapFamily.build("mammut_micro-A", cfg), family="cap", arch="mammut_micro-A",
                      preprocess=PreprocessCfg(size=64), tokenizer=clip.tokenizer, context_length=77, text_pooling="mean")
    assert cap.has_captioner and not cap.has_contrastive
    with pytest.raises(NoContrastiveHead, match="trained without the contrastive loss"):
        cap.encode_image(torch.zeros(1, 3, 64, 64))
    with torch.no_grad():
        assert cap.caption_context(torch.zeros(2, 3, 64, 64)).shape == (2, 17, 8)
