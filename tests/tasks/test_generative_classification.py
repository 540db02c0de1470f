"""generative_zeroshot_classification against the clip_benchmark branch `log_likelihood_eval`.

- tests/fixtures/generative-branch/expected.pt: the branch's own code on the fork's own MaMMUT (micro-A),
  20 embedded images x 10 classes x 7 templates, normalisation off and on (its make_expected.py);
- tests/oracles/branch_generative.py: the branch's rule copied step for step, run here on evalkit's
  models (first checked against that fixture, then on the embedded world's trained MaMMUT);
- hand-computed log-probabilities on a 2-class, 1-template, 3-token decoder, and the tie rules.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from _util import fixture_path
from oracles import branch_generative as oracle

from evalkit.data.sources import ImageSource
from evalkit.engine.device import autocast_for
from evalkit.models.factory import load_model
from evalkit.tasks.base import READOUTS, RunContext, protocols
from evalkit.tasks.spec import TaskSpec

MICRO = fixture_path("mammut-fork", "micro-A")
BRANCH = fixture_path("generative-branch", "expected.pt")
SOT, EOT, V = 49406, 49407, 49408
CONFIGS = {"plain": {}, "normalized": {"normalize": True, "normalize_coef": 1.0},
           "normalized_half": {"normalize": True, "normalize_coef": 0.5}}


def _ctx() -> RunContext:
    return RunContext(device=torch.device("cpu"), autocast=autocast_for(torch.device("cpu"), "fp32"))


def _source(targets: list[int], classnames: list[str]) -> ImageSource:
    return ImageSource(name="test-images", ids=[f"img{i}" for i in range(len(targets))], opener=lambda i: None,
                       targets=targets, fingerprint="x", classnames=classnames)


def _spec(classnames, templates, **options) -> TaskSpec:
    opts = {"normalize": False, "normalize_coef": 1.0, "max_per_class": None, "rerank_top_k": None,
            "prompt_batch_size": None, **options}
    return TaskSpec(name="gen", type="generative_zeroshot_classification", dataset="x", classnames=list(classnames),
                    templates=list(templates), metrics=["acc1", "acc5", "mean_per_class_recall"], main_metric="acc1",
                    options=opts)


def _run(lm, images: torch.Tensor, targets: list[int], classnames, templates, batch: int = 8, **options):
    """The runner as the engine drives it: prepare, one update per image batch (the caption_context
    readout), result."""
    cls = protocols()["generative_zeroshot_classification"]
    runner = cls(_spec(classnames, templates, **options), _source(targets, list(classnames)))
    runner.prepare(lm, _ctx())
    for s in range(0, len(targets), batch):
        with torch.no_grad():
            runner.update(torch.arange(s, min(s + batch, len(targets))), READOUTS[runner.needs](lm, images[s:s + batch]))
    return runner.result(), runner.logits


@pytest.fixture(scope="module")
def micro():
    return load_model(str(MICRO / "mammut_micro-A.json"), pretrained=str(MICRO / "epoch_3.pt"))


@pytest.fixture(scope="module")
def branch() -> dict:
    return torch.load(BRANCH, weights_only=True)


def _check_branch(micro, branch, config: str, pbs: int | None) -> None:
    result, scores = _run(micro, branch["images"], branch["targets"].tolist(), branch["classnames"],
                          branch["templates"], prompt_batch_size=pbs, **CONFIGS[config])
    want = branch[f"{config}/scores"]
    assert scores.shape == want.shape == (20, 10)
    assert torch.allclose(scores, want, atol=1e-4, rtol=1e-6), (scores - want).abs().max()
    assert torch.equal(scores.argmax(1), want.argmax(1))
    assert result.metrics == pytest.approx(branch[f"{config}/metrics"], abs=1e-12)
    assert result.n_samples == 20


@pytest.mark.parametrize("config", list(CONFIGS))
def test_equals_the_branchs_own_output(micro, branch, config: str) -> None:
    """Per-image class scores to 1e-4 (plus 1e-6 relative: float32 sums of ~600) and the metrics exactly,
    against the branch's code on the fork, normalisation off and on (coefficients 1 and 0.5)."""
    _check_branch(micro, branch, config, None)
    if config != "plain":  # the prior moves the scores (and so is really applied)
        assert (branch[f"{config}/scores"] - branch["plain/scores"]).abs().min() > 1.0


@pytest.mark.slow
def test_equals_the_branch_in_chunks_of_five(micro, branch) -> None:
    """Chunks of 5 prompts: each chunk shares its template's leading words (the prefix path)."""
    _check_branch(micro, branch, "plain", 5)


@pytest.mark.slow
@pytest.mark.parametrize("config", list(CONFIGS))
def test_the_oracle_copy_equals_the_branch(micro, branch, config: str) -> None:
    """The copied rule (tests/oracles) on evalkit's MaMMUT gives the branch's numbers: a faithful copy."""
    batches = [(branch["images"][s:s + 8], branch["targets"][s:s + 8]) for s in range(0, 20, 8)]
    with torch.no_grad():
        pred, true = oracle.run_classification(oracle.ForkMaMMUT(micro.model), branch["classnames"], branch["templates"],
                                               batches, micro.tokenizer, prompt_batch_size=32, **CONFIGS[config])
    assert torch.allclose(pred, branch[f"{config}/scores"], atol=1e-4, rtol=1e-6)
    assert oracle.metrics(pred, true, 10) == pytest.approx(branch[f"{config}/metrics"], abs=1e-12)


def _hand_model():
    """A MaMMUT whose blocks all add zero (attention and MLP outputs zeroed), so the hidden state at a
    position is ln_final(token embedding): with e_SOT = (1,-1,0,...), e_a = (0,0,1,-1,0,...),
    e_b = (0,0,0,0,1,-1,0,0) and unit ln_final, LN(e) = s * e with s = 1/sqrt(1/4 + eps) (mean 0,
    variance 2/8), and logits = LN(e) @ head with head[0, a] = 1, head[0, b] = u, head[2, EOT] = 1,
    head[4, EOT] = w. Every other logit is 0."""
    from evalkit.models.families.mammut import MaMMUT

    cfg = json.loads((MICRO / "config.json").read_text())
    model = MaMMUT(cfg).eval()
    with torch.no_grad():
        for blk in [*model.text.resblocks, *model.text.cross_attn]:
            blk.attn.out_proj.weight.zero_()
            blk.attn.out_proj.bias.zero_()
            if blk.mlp is not None:
                blk.mlp.c_proj.weight.zero_()
                blk.mlp.c_proj.bias.zero_()
        model.text.positional_embedding.zero_()
        model.text.token_embedding.weight.zero_()
        model.text.ln_final.weight.fill_(1.0)
        model.text.ln_final.bias.zero_()
        model.text.text_projection.zero_()
    return model


A, B = 320, 321  # token ids of the two "class names"


def _hand_lm(u: float, w: float):
    from evalkit.data.preprocess import PreprocessCfg
    from evalkit.models.family import LoadedModel

    model = _hand_model()
    emb, head = model.text.token_embedding.weight, model.text.text_projection
    with torch.no_grad():
        emb[SOT, :2] = torch.tensor([1.0, -1.0])
        emb[A, 2:4] = torch.tensor([1.0, -1.0])
        emb[B, 4:6] = torch.tensor([1.0, -1.0])
        head[0, A], head[0, B], head[2, EOT], head[4, EOT] = 1.0, u, 1.0, w

    def tok(texts: list[str]) -> torch.Tensor:  # "a" -> [SOT, A, EOT], "b" -> [SOT, B, EOT]
        out = torch.zeros(len(texts), 77, dtype=torch.long)
        for i, t in enumerate(texts):
            out[i, :3] = torch.tensor([SOT, {"a": A, "b": B}[t], EOT])
        return out

    return LoadedModel(model=model, family="mammut", arch="hand", preprocess=PreprocessCfg(size=64), tokenizer=tok,
                       context_length=77, text_pooling="mean")


def _log_p(logit: float, others: int = V - 1, extra: list[float] = ()) -> float:
    """log softmax of `logit` against `others` zero logits and the `extra` ones."""
    return logit - math.log(math.exp(logit) + others - len(extra) + sum(math.exp(x) for x in extra))


def test_hand_computed_two_classes_one_template_three_tokens() -> None:
    s = 1 / math.sqrt(0.25 + 1e-5)
    u, w = 0.5, 3.0
    lm = _hand_lm(u, w)
    # class a: log p(A | SOT) + log p(EOT | A); class b: log p(B | SOT) + log p(EOT | B); after SOT the
    # logits of A and B are s and s u, after A the EOT's is s, after B s w, all others 0
    score_a = _log_p(s, extra=[s * u]) + _log_p(s)
    score_b = _log_p(s * u, extra=[s]) + _log_p(s * w)
    images = torch.randn(3, 3, 64, 64)
    result, logits = _run(lm, images, [0, 1, 1], ["a", "b"], ["{c}"])
    want = torch.tensor([[score_a, score_b]] * 3, dtype=torch.float32)
    assert torch.allclose(logits, want, atol=1e-5), (logits, want)
    assert score_b > score_a  # every image predicts class 1
    assert result.metrics["acc1"] == pytest.approx(2 / 3) and math.isnan(result.metrics["acc5"])  # < 5 classes
    assert result.metrics["mean_per_class_recall"] == pytest.approx(0.5)  # class 0: 0/1, class 1: 2/2


def test_ties_go_to_the_first_class() -> None:
    """Equal class scores (u = w = 1: "a" and "b" are mirror images): argmax and topk take the lower
    class index, as the branch's `argmax` / `topk` do; images of class 1 then count wrong."""
    lm = _hand_lm(1.0, 1.0)
    result, logits = _run(lm, torch.randn(4, 3, 64, 64), [0, 1, 1, 1], ["a", "b"], ["{c}"])
    assert torch.equal(logits[:, 0], logits[:, 1])
    assert result.metrics["acc1"] == 0.25 and result.metrics["mean_per_class_recall"] == 0.5
    assert oracle.metrics(logits, torch.tensor([0, 1, 1, 1]), 2)["acc1"] == 0.25


def test_options_are_typed_and_in_the_hash(tmp_path: Path) -> None:
    from evalkit.tasks.loader import read_task_file
    from evalkit.tasks.spec import TaskError

    base = tmp_path / "g.yaml"
    base.write_text("include: shapes_generative\nname: g\n")
    sub = tmp_path / "g5.yaml"
    sub.write_text("include: shapes_generative\nname: g\nmax_per_class: 5\nnormalize: true\nnormalize_coef: 1\n")
    a, b = read_task_file(base), read_task_file(sub)
    assert a.options["normalize"] is False and a.options["max_per_class"] == 5  # shapes_generative's own
    assert (b.options["max_per_class"], b.options["normalize"], b.options["normalize_coef"]) == (5, True, 1)
    assert a.hash != b.hash
    bad = tmp_path / "bad.yaml"
    bad.write_text("include: shapes_generative\nname: g\nmax_per_class: five\n")
    with pytest.raises(TaskError, match="max_per_class"):
        read_task_file(bad)
    bad.write_text("include: shapes_generative\nname: g\nrerank_top_k: 0\n")
    with pytest.raises(TaskError, match="rerank_top_k must be a positive integer"):
        read_task_file(bad)


def test_rerank_scores_the_contrastive_top_k_only(micro, branch) -> None:
    """rerank_top_k: K: each image's K best classes by the contrastive head get their full generative
    score (equal to the unreranked one), the others -inf; with K = all classes, the full result."""
    images, targets = branch["images"][:8], branch["targets"][:8].tolist()
    names, templates = branch["classnames"], branch["templates"]
    full = branch["plain/scores"][:8]
    _, top3 = _run(micro, images, targets, names, templates, rerank_top_k=3)
    with torch.no_grad():
        from evalkit.tasks.protocols.zeroshot_classification import build_classifier

        contrastive = micro.encode_image(images) @ build_classifier(micro, list(names), list(templates), _ctx())
    want_top = contrastive.topk(3, dim=1).indices.sort(dim=1).values
    assert torch.equal(torch.isfinite(top3).nonzero()[:, 1].view(8, 3), want_top)
    assert torch.allclose(top3[torch.isfinite(top3)], full[torch.isfinite(top3)], atol=1e-4, rtol=1e-6)
    _, all10 = _run(micro, images, targets, names, templates, rerank_top_k=10)
    assert torch.allclose(all10, full, atol=1e-4, rtol=1e-6)


def test_truncated_prompts_are_counted() -> None:
    """A prompt longer than the context is cut as CLIP's tokenizer cuts it and counted in the resolved task."""
    from evalkit.tasks.protocols.generative_zeroshot_classification import truncated_prompts

    long = "a photo of a " + " ".join(["very"] * 80) + " dog."  # 86 BPE tokens + SOT/EOT
    assert truncated_prompts(["a photo of a dog.", long, "x" * 200]) == 1  # 200 characters, fewer than 76 BPE tokens
    assert truncated_prompts(["a photo of a dog."] * 3) == 0
