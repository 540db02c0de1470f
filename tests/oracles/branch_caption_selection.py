"""ORACLE, NOT evalkit code: a copy of the rule of LAION's clip_benchmark branch `log_likelihood_eval`
(mirrored in dwahdany/CLIP_benchmark, commit 391997fe7fec7f708cba65bc7726e887945a6615), file
`clip_benchmark/metrics/generative_image_caption_selection.py`, functions `evaluate` (its open_clip-model
path: no external normaliser LM), `score_aligned` and `get_any`, kept step for step: per instance the
captions tokenized together and cut at the largest first-pad index, the image tokens repeated once per
caption, a full-vocabulary log-softmax over [images x captions, L, V], the prior from
`forward(image=None, image_embs=None, text=...)`, the tie rule (a row or column of equal scores is set
to -1) and NaN = wrong. The only addition: it also returns each instance's score matrix and verdicts,
so tests compare per instance.

The branch calls the fork's MaMMUT (LAION-AI/open_clip_mammut): `ForkMaMMUT` rewrites the two calls it
makes, `_encode_image` and `forward`, over evalkit's module, whose tensors equal the fork's
(tests/models/test_mammut.py): causal self-attention and cross-attention with image embeddings, neither
without them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ForkMaMMUT:
    def __init__(self, model) -> None:
        self.m = model

    def _encode_image(self, images):
        feats, tokens = self.m.visual(images)
        return F.normalize(feats, dim=-1), tokens

    def forward(self, image=None, text=None, image_latent=None, image_embs=None):
        out = {}
        if image_embs is not None:
            image_embs = image_embs @ self.m.map_viz2txt_kv
        out["labels"] = text[:, 1:]
        hidden = self.m.text(text[:, :-1], image_embs=image_embs)
        out["logits"] = hidden @ self.m.text.text_projection
        return out


def score_aligned(logits, texts):
    I, L, V = logits.shape  # noqa: E741 (the branch's names)
    I2, L = texts.shape
    assert I == I2
    lp = logits.log_softmax(dim=-1)
    texts = texts.view(I, L, 1)
    lp = torch.gather(lp, 2, texts)
    lp[texts == 0] = 0
    ce = lp.sum(dim=(1, 2))
    return ce


def get_any(dic, keys, default=None):
    for k in keys:
        if k in dic:
            return dic[k]
    return default


def judge(scores: torch.Tensor, n_gt: int) -> tuple[bool, bool]:
    """The branch's verdict on one instance's [nim, ntext] scores: (text correct, image correct)."""
    nim, ntext = scores.shape
    gt = torch.arange(n_gt)
    if torch.any(torch.isnan(scores)):
        return False, False
    image_closest_text = scores.argmax(dim=1)
    if ntext > 1:
        val = scores[:, 0:1]
        all_equal = (scores == val).sum(dim=1) == ntext
        image_closest_text[all_equal] = -1
    text_closest_image = scores.argmax(dim=0)
    val = scores[0:1, :]
    if nim > 1:
        all_equal = (scores == val).sum(dim=0) == nim
        text_closest_image[all_equal] = -1
    image_closest_text = image_closest_text[: len(gt)]
    text_closest_image = text_closest_image[: len(gt)]
    return bool((image_closest_text == gt).all().item()), bool((text_closest_image == gt).all().item())


@torch.no_grad()
def evaluate(model, dataloader, tokenizer, normalize=False, normalize_coef=1):
    """The branch's `evaluate` (device cpu, amp off). Returns (metrics, per-instance rows)."""
    image_score, text_score, score, rows = [], [], [], []
    for batch_images, batch_texts in dataloader:
        if len(batch_images.shape) == 4:
            B, C, H, W = batch_images.shape
            batch_images = batch_images.view(B, 1, C, H, W)
        B, nim, C, H, W = batch_images.shape
        nt = len(batch_texts[0])
        batch_images_ = batch_images.view(B * nim, C, H, W)
        batch_texts_tok_ = tokenizer([text for i, texts in enumerate(batch_texts) for text in texts])
        batch_texts_tok_ = batch_texts_tok_.view(B, nt, -1)
        _, batch_images_emb = model._encode_image(batch_images_)
        bs, seqlen, hidden = batch_images_emb.shape
        batch_images_emb = batch_images_emb.view(B, nim, seqlen, hidden)
        gt = torch.arange(min(nim, nt))
        for i in range(B):
            image_emb = batch_images_emb[i]
            texts = batch_texts_tok_[i]
            max_text_len = (texts == 0).float().argmax(dim=-1).max().item()
            texts = texts[:, :max_text_len]
            nim, lim, dim = image_emb.shape
            ntext, ltext = texts.shape
            image_embs_p = image_emb.view(nim, 1, lim, dim).repeat(1, ntext, 1, 1).view(nim * ntext, lim, dim)
            texts_p = texts.view(1, ntext, ltext).repeat(nim, 1, 1).view(nim * ntext, ltext)
            out = model.forward(image=None, image_embs=image_embs_p, text=texts_p)
            logits = get_any(out, ["logits_text", "logits"])
            labels = get_any(out, ["labels_text", "labels"])
            scores = score_aligned(logits, labels).view(nim, ntext)
            if normalize:
                out_uncond = model.forward(image=None, image_embs=None, text=texts)
                logits = get_any(out_uncond, ["logits_text", "logits"])
                labels = get_any(out_uncond, ["labels_text", "labels"])
                priors = score_aligned(logits, labels).view(1, len(texts))
                scores = scores - normalize_coef * priors
            pred_text_is_correct, pred_image_is_correct = judge(scores, len(gt))
            all_correct = pred_text_is_correct and pred_image_is_correct
            image_score.append(pred_image_is_correct)
            text_score.append(pred_text_is_correct)
            score.append(all_correct)
            rows.append({"scores": scores.clone(), "text_correct": pred_text_is_correct,
                         "image_correct": pred_image_is_correct, "correct": all_correct})
    metrics = {"image_acc": torch.Tensor(image_score).float().mean().item(),
               "text_acc": torch.Tensor(text_score).float().mean().item(),
               "acc": torch.Tensor(score).float().mean().item()}
    return metrics, rows
