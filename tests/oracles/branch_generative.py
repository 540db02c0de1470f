"""ORACLE, NOT evalkit code: a copy of the rule of LAION's clip_benchmark branch `log_likelihood_eval`
(mirrored in dwahdany/CLIP_benchmark, commit 391997fe7fec7f708cba65bc7726e887945a6615), file
`clip_benchmark/metrics/generative_zeroshot_classification.py`, functions `score_aligned`,
`run_classification` (its open_clip-model path: no external normalizer LM, no distributed gather) and
`evaluate` (single-label metrics), kept step for step: prompts tokenized together, cut at the first
pad's largest index, the image tokens repeated once per prompt, a full-vocabulary log-softmax over
[images x prompts, L, V], the prior from `forward(image=None, image_embs=None, text=...)`.

The branch calls the fork's MaMMUT (LAION-AI/open_clip_mammut, `mammut_model.py`): `ForkMaMMUT` below
rewrites exactly the two calls it makes, `_encode_image` and `forward`, over evalkit's module (whose
tensors equal the fork's, tests/models/test_mammut.py), so the oracle runs on any evalkit MaMMUT.
Verified against the branch's own output on the fork's own model (tests/fixtures/generative-branch).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sklearn.metrics import balanced_accuracy_score


class ForkMaMMUT:
    """The fork's `MaMMUT._encode_image` and `MaMMUT.forward` (is_training=True, use_contrastive=True:
    the contrastive text pass it also runs changes no output the branch reads, so it is skipped)."""

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
        text = text[:, :-1]
        # the fork's text tower: causal + cross-attention with image_embs, neither without (evalkit's too)
        hidden = self.m.text(text, image_embs=image_embs)
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


def run_classification(model, classnames, templates, batches, tokenizer, normalize=False, normalize_coef=1,
                       prompt_batch_size=64, pad_id=0, cut=None):
    """`run_classification` of the branch; `batches` yields (images, target). Returns (pred, true).
    `cut` (not in the branch) replaces its cut length, e.g. by the one it takes on a whole task when
    timing it on a part (scores do not change under the causal mask; the prior would)."""
    prompts = [[template.format(c=classname) for template in templates] for classname in classnames]
    nb_classes = len(prompts)
    nb_templates = len(prompts[0])
    tokenized_prompts = tokenizer([ct for cl in prompts for ct in cl])
    _, context_length = tokenized_prompts.shape
    tokenized_prompts = tokenized_prompts.view(nb_classes, nb_templates, context_length)
    pred, true = [], []
    max_text_len = (tokenized_prompts == pad_id).float().argmax(dim=2).max() if cut is None else cut
    tokenized_prompts = tokenized_prompts[:, :, 0:max_text_len]
    tokenized_prompts_ = tokenized_prompts.reshape(nb_classes * nb_templates, -1)
    priors = None
    if normalize:
        all_scores = []
        for i in range(0, tokenized_prompts_.shape[0], prompt_batch_size):
            out = model.forward(image=None, image_embs=None, text=tokenized_prompts_[i:i + prompt_batch_size])
            scores = score_aligned(get_any(out, ["logits_text", "logits"]), get_any(out, ["labels_text", "labels"]))
            all_scores.append(scores)
        priors = torch.cat(all_scores).view(1, nb_classes, nb_templates)
    with torch.no_grad():
        for images, target in batches:
            scores_batch = []
            _, image_embs = model._encode_image(images)
            nim, lim, dim = image_embs.shape
            for i in range(0, nb_classes * nb_templates, prompt_batch_size):
                texts = tokenized_prompts_[i:i + prompt_batch_size, :]
                ntext, ltext = texts.shape
                image_embs_p = image_embs.view(nim, 1, lim, dim).repeat(1, ntext, 1, 1).view(nim * ntext, lim, dim)
                texts_p = texts.view(1, ntext, ltext).repeat(nim, 1, 1).view(nim * ntext, ltext)
                out = model.forward(text=texts_p, image_embs=image_embs_p)
                scores = score_aligned(get_any(out, ["logits_text", "logits"]), get_any(out, ["labels_text", "labels"]))
                scores_batch.append(scores.view(nim, ntext).float())
            scores = torch.cat(scores_batch, dim=1).view(nim, nb_classes, nb_templates)
            if normalize:
                scores = scores - normalize_coef * priors
            pred.append(scores.sum(dim=-1).cpu())
            true.append(target.cpu())
    return torch.cat(pred), torch.cat(true)


def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).cpu().item()) / n for k in topk]  # .numpy() in the branch


def metrics(logits, target, n_classes):
    """`evaluate`'s single-label branch."""
    pred = logits.argmax(axis=1)
    if n_classes >= 5:
        acc1, acc5 = accuracy(logits, target, topk=(1, 5))
    else:
        (acc1,) = accuracy(logits, target, topk=(1,))
        acc5 = float("nan")
    return {"acc1": acc1, "acc5": acc5, "mean_per_class_recall": balanced_accuracy_score(target, pred)}
