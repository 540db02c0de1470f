"""MaMMUT under autocast casts its LayerNorms as the fork does (issue 15, item 6).

The fork builds every norm of an fp32-weight model (`ln_pre`, `ln_1`, `ln_1_kv`, `ln_2`, `ln_post`,
`ln_final`) as open_clip's `LayerNorm`, whose output is cast back to its input's dtype. A plain
`nn.LayerNorm` under CUDA autocast returns float32 (layer_norm is on CUDA autocast's fp32 list), so the
vision residual stream, which enters as bf16/fp16 from the autocast patch conv, would stay float32 and
the GPU numbers would drift from the fork's.

CPU autocast has no such policy for layer_norm: there it runs in the input's dtype, and a plain
`nn.LayerNorm` happens to give bf16 out for bf16 in, so the bug does not show on CPU as it is. The tests
therefore emulate CUDA's policy (`cuda_layer_norm_policy`: under autocast, F.layer_norm computes in
float32 and returns float32, exactly what CUDA autocast does) and check that the norms cast back anyway,
against open_clip's own classes with the same weights.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from _util import fixture_path
from open_clip.model import _build_vision_tower
from open_clip.transformer import LayerNorm as ForkLayerNorm
from open_clip.transformer import ResidualAttentionBlock

from evalkit.models.checkpoint import _torch_load, load_into, read_state_dict
from evalkit.models.families.mammut import MaMMUT, MaMMUTFamily

MICRO = fixture_path("mammut-fork", "micro-A")
BF16 = torch.bfloat16


def _autocast():
    return torch.autocast("cpu", dtype=BF16)


@pytest.fixture(scope="module")
def micro() -> MaMMUT:
    cfg = json.loads((MICRO / "config.json").read_text())
    model = MaMMUTFamily.build("mammut_micro-A", cfg)
    load_into(model, MaMMUTFamily.prepare_state_dict(model, read_state_dict(MICRO / "epoch_3.pt")), "micro-A")
    return model.eval()


@pytest.fixture(scope="module")
def inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return _torch_load(MICRO / "inputs.pt")["images"], _torch_load(MICRO / "tokens.pt")  # type: ignore[index,return-value]


@pytest.fixture
def cuda_layer_norm_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """F.layer_norm as under CUDA autocast: inputs cast to float32, a float32 result."""
    real = F.layer_norm

    def f32(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.float()

    def layer_norm(x, shape, weight=None, bias=None, eps=1e-5):
        if torch.is_autocast_enabled("cpu"):
            return real(x.float(), shape, f32(weight), f32(bias), eps)
        return real(x, shape, weight, bias, eps)

    monkeypatch.setattr(F, "layer_norm", layer_norm)


def _norms(model: torch.nn.Module) -> dict[str, torch.nn.LayerNorm]:
    return {k: m for k, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)}


def test_every_norm_casts_back_like_the_fork(micro: MaMMUT, cuda_layer_norm_policy: None) -> None:
    norms = _norms(micro)
    # Every norm of the fork's model: vision ln_pre/ln_post and the blocks', the text blocks' (with and
    # without MLP), the cross blocks' ln_1_kv, ln_final.
    assert {"visual.ln_pre", "visual.ln_post", "visual.transformer.resblocks.0.ln_2", "text.resblocks.0.ln_1",
            "text.resblocks.1.ln_2", "text.cross_attn.0.ln_1_kv", "text.ln_final"} <= set(norms)
    torch.manual_seed(0)
    for name, ln in norms.items():
        fork = ForkLayerNorm(ln.normalized_shape, eps=ln.eps)
        fork.load_state_dict(ln.state_dict())
        for dtype in (BF16, torch.float32):
            x = torch.randn(2, 3, *ln.normalized_shape).to(dtype)
            with torch.no_grad(), _autocast():
                got, want = ln(x), fork(x)
            assert want.dtype == dtype
            assert got.dtype == dtype, f"{name}: {dtype} in, {got.dtype} out (the fork casts back)"
            assert torch.equal(got, want), name
    # Outside autocast nothing changes: the fp32 oracle numbers (tests/models/test_mammut.py) stay as they were.
    x = torch.randn(2, 64)
    assert torch.equal(micro.visual.ln_pre(x), F.layer_norm(x, (64,), micro.visual.ln_pre.weight,
                                                            micro.visual.ln_pre.bias, 1e-5))


def _fork_vision(micro: MaMMUT) -> torch.nn.Module:
    """The fork's vision tower for an fp32-weight model (open_clip's `_build_vision_tower`, `LayerNorm`).

    open_clip 3.3 has no `avg_all` pooling, so the tower is built with `tok` and the fork's avg_all +
    final_ln_after_pool (mean over all tokens, then ln_post, then proj) is applied by hand below."""
    vcfg = dict(json.loads((MICRO / "config.json").read_text())["vision_cfg"], pool_type="tok")
    tower = _build_vision_tower(8, vcfg, quick_gelu=False, cast_dtype=None)
    tower.load_state_dict(micro.visual.state_dict())
    return tower.eval()


def _residual_dtypes(blocks: torch.nn.ModuleList) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    hooks = [b.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype)) for b in blocks]
    return seen, hooks


def test_vision_residual_stream_and_features_match_the_fork(
    micro: MaMMUT, inputs: tuple, cuda_layer_norm_policy: None
) -> None:
    images = inputs[0]
    fork = _fork_vision(micro)
    ours_seen, h1 = _residual_dtypes(micro.visual.transformer.resblocks)
    fork_seen, h2 = _residual_dtypes(fork.transformer.resblocks)
    try:
        with torch.no_grad(), _autocast():
            ours_pre = micro.visual.ln_pre(micro.visual.conv1(images).flatten(2).transpose(1, 2))
            feats = micro.encode_image(images, normalize=False)
            tokens = fork.transformer(fork._embeds(images))
            want = fork.ln_post(tokens.mean(dim=1)) @ fork.proj
    finally:
        for h in h1 + h2:
            h.remove()
    assert ours_pre.dtype == BF16  # the conv's bf16 goes through ln_pre as bf16
    assert fork_seen == [BF16, BF16]
    assert ours_seen == fork_seen, f"residual stream {ours_seen}, the fork's {fork_seen}"
    assert feats.dtype == want.dtype
    assert torch.equal(feats, want), (feats.float() - want.float()).abs().max()


def test_text_blocks_match_the_fork(micro: MaMMUT, cuda_layer_norm_policy: None) -> None:
    """The decoder's self-attention (with MLP) and cross-attention blocks against open_clip's
    `ResidualAttentionBlock` with the same weights, fp32 and bf16 streams, image kv in bf16 (the
    captioning path's `tokens @ map_viz2txt_kv` under autocast)."""
    width, heads = 8, 2
    torch.manual_seed(0)
    kv = torch.randn(2, 17, width).to(BF16)
    for ours, cross in ((micro.text.resblocks[1], False), (micro.text.cross_attn[0], True), (micro.text.cross_attn[1], True)):
        fork = ResidualAttentionBlock(width, heads, 4.0, is_cross_attention=cross).eval()
        fork.load_state_dict(ours.state_dict())
        for dtype in (torch.float32, BF16):
            x = torch.randn(2, 5, width).to(dtype)
            with torch.no_grad(), _autocast():
                got = ours(x, kv=kv) if cross else ours(x)
                want = fork(x, k_x=kv, v_x=kv) if cross else fork(x)
            assert got.dtype == want.dtype == dtype
            assert torch.equal(got, want)


def test_autocast_features_stay_close_to_fp32(micro: MaMMUT, inputs: tuple) -> None:
    """Real CPU autocast (no emulation): bf16 features within bf16 rounding of the fp32 ones."""
    images, tokens = inputs
    with torch.no_grad():
        img32, txt32 = micro.encode_image(images), micro.encode_text(tokens)
        with _autocast():
            img16, txt16 = micro.encode_image(images), micro.encode_text(tokens)
            logits16 = micro.caption_logits(micro.image_tokens(images[:2]), tokens[:2])
        logits32 = micro.caption_logits(micro.image_tokens(images[:2]), tokens[:2])
    assert img16.dtype == BF16  # the projection runs in bf16 under autocast, as in the fork
    assert (img16.float() - img32).abs().max() < 3e-2
    assert (txt16.float() - txt32).abs().max() < 3e-2
    assert F.cosine_similarity(img16.float(), img32).min() > 0.999
    assert F.cosine_similarity(txt16.float(), txt32).min() > 0.999
    assert (logits16.float() - logits32).abs().max() < 5e-2 * logits32.abs().max()
