"""Generative zero-shot classification: evalkit's decoder scoring against the clip_benchmark branch's loop.

Both score the same checkpoint on the same images and the same ImageNet prompts (the first `--classes`
classes x the 80 OpenAI templates), side by side in one process; the scores are checked equal first.

- branch: tests/oracles/branch_generative.py, the branch's `run_classification` step for step (image
  tokens repeated once per prompt, so every prompt recomputes the image-to-text map and every
  cross-attention key/value; prompts cut to the longest one; a full-vocabulary log-softmax over
  [images x 32 prompts, L, 49,408]; prompt batches of 32). It skips the contrastive text pass that the
  fork's `forward` also runs on every call (a bidirectional decoder pass with its own vocabulary
  projection), so the branch's real time is higher: the ratio below is a lower bound.
- evalkit: `GenerativeZeroShotClassification` itself (prepare once, update per image batch): context
  and cross keys/values once per image, template words before `{c}` once per chunk, chunks cut to their
  longest prompt, the LM head only at target positions in 256 MiB blocks.

The branch cuts every prompt to the task's longest (22 tokens for ImageNet-1k's 80,000; pads run
through the decoder and the LM head): by default the bench lets it cut the subset's prompts to that
length, its per-prompt cost on the real task (the scores do not change); `--subset-cut` cuts to the
subset's own longest instead (14 for the first 10 classes), the most favourable case for the branch.

Reported per model: seconds per image for both, the ratio, GFLOPs per (image, prompt) for both (torch's
FLOP counter), max |score difference|, and the largest logits block each holds. Random weights (time
does not depend on the values); `mammut_tiny-S` (evalkit's embedded size) and `mammut_ViT-B-32` (the
paper's B-32 decoder: width 512, 12 layers); on a GPU also `mammut_ViT-L-14`.

    python bench/bench_generative.py                       # CPU: tiny and B-32
    python bench/bench_generative.py --device cuda --archs mammut_ViT-B-32,mammut_ViT-L-14 --classes 50
    python bench/bench_generative.py --record              # + bench/RESULTS.md
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]


def _lm(arch: str, device: torch.device):
    from evalkit.models.factory import load_model
    from evalkit.models.spec import ModelSpec

    torch.manual_seed(0)
    lm = load_model(ModelSpec(model=arch), device=device)
    with torch.no_grad():  # the LM head starts at zero in the fork: give it values so scores differ
        lm.model.text.text_projection.normal_(std=lm.model.text.text_projection.shape[0] ** -0.5)
    return lm


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def imagenet_cut(tokenizer) -> int:
    """The length the branch cuts every ImageNet-1k prompt to (its longest of 80,000: 22 tokens)."""
    import open_clip

    prompts = [t("{c}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    toks = tokenizer([t.format(c=c) for c in open_clip.IMAGENET_CLASSNAMES for t in prompts])
    return int((toks != 0).sum(dim=1).max())


def bench(arch: str, device: torch.device, n_images: int, n_classes: int, batch: int, autocast: bool,
          full_cut: bool) -> dict:
    import open_clip
    from oracles import branch_generative as oracle

    from evalkit.engine.device import autocast_for
    from evalkit.tasks.base import RunContext, protocols
    from evalkit.tasks.spec import TaskSpec

    lm = _lm(arch, device)
    size = lm.preprocess.size
    images = torch.randn(n_images, 3, size, size, device=device)
    classes = list(open_clip.IMAGENET_CLASSNAMES[:n_classes])
    templates = [t("{c}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    n_prompts = n_classes * len(templates)
    precision = "amp_bf16" if autocast else "fp32"
    ctx = RunContext(device=device, autocast=autocast_for(device, precision))
    spec = TaskSpec(name="g", type="generative_zeroshot_classification", dataset="x", classnames=classes,
                    templates=templates, options={"normalize": False, "normalize_coef": 1.0, "max_per_class": None,
                                                  "rerank_top_k": None, "prompt_batch_size": None})
    from evalkit.data.sources import ImageSource

    source = ImageSource(name="b", ids=[str(i) for i in range(n_images)], opener=lambda i: None,
                         targets=[0] * n_images, fingerprint="b")

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def ours() -> torch.Tensor:
        runner = protocols()["generative_zeroshot_classification"](spec, source)
        runner.prepare(lm, ctx)
        for s in range(0, n_images, batch):
            with torch.no_grad(), ctx.autocast():
                readout = lm.caption_context(images[s:s + batch]).float()
            runner.update(torch.arange(s, min(s + batch, n_images)), readout)
        return runner.logits

    cut = imagenet_cut(lm.tokenizer) if full_cut else None

    def branch() -> torch.Tensor:
        batches = [(images[s:s + batch], torch.zeros(len(images[s:s + batch]), dtype=torch.long))
                   for s in range(0, n_images, batch)]
        with torch.no_grad(), ctx.autocast():
            pred, _ = oracle.run_classification(oracle.ForkMaMMUT(lm.model), classes, templates, batches,
                                                lm.tokenizer, prompt_batch_size=32, cut=cut)
        return pred

    # warm-up on one image (kernels, the tokenization/plan caches), then timed
    # CPU: process time with a fixed thread count (other processes on a shared machine do not count);
    # CUDA: wall time after a synchronize
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    out = {}
    for name, fn in (("evalkit", ours), ("branch", branch)):
        sync()
        t = clock()
        res = fn()
        sync()
        out[name] = (clock() - t, res)
    diff = float((out["evalkit"][1].cpu() - out["branch"][1].cpu()).abs().max())
    one = images[:1]
    n_small = n_classes  # FLOPs of one image against every prompt
    small_spec = spec

    def ours_one() -> None:
        r = protocols()["generative_zeroshot_classification"](small_spec, ImageSource(
            name="b1", ids=["0"], opener=lambda i: None, targets=[0], fingerprint="b1"))
        r.prepare(lm, ctx)
        with torch.no_grad():
            r.update(torch.arange(1), lm.caption_context(one))

    def branch_one() -> None:
        with torch.no_grad():
            oracle.run_classification(oracle.ForkMaMMUT(lm.model), classes[:n_small], templates,
                                      [(one, torch.zeros(1, dtype=torch.long))], lm.tokenizer, prompt_batch_size=32,
                                      cut=cut)

    per = n_small * len(templates)
    vocab = lm.model.text.text_projection.shape[1]
    own_cut = int((lm.tokenizer([t.format(c=c) for c in classes for t in templates]) != 0).sum(1).max())
    cut = cut or own_cut
    return {
        "arch": arch, "branch_cut": cut, "device": str(device), "precision": precision, "images": n_images, "prompts": n_prompts,
        "s_per_image_evalkit": out["evalkit"][0] / n_images, "s_per_image_branch": out["branch"][0] / n_images,
        "ratio": out["branch"][0] / out["evalkit"][0],
        "gflops_per_prompt_evalkit": _flops(ours_one) / per / 1e9,
        "gflops_per_prompt_branch": _flops(branch_one) / per / 1e9,
        "max_abs_diff": diff, "score_scale": float(out["branch"][1].abs().max()),
        "branch_logits_mb": min(batch, n_images) * 32 * (cut - 1) * vocab * 4 / 2**20,
        "evalkit_logits_mb": 256.0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", default="mammut_tiny-S,mammut_ViT-B-32")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4, help="images per batch (the paper's runs: 64)")
    ap.add_argument("--subset-cut", action="store_true",
                    help="let the branch cut to the subset's longest prompt (default: to ImageNet-1k's, 22 "
                         "tokens, what it pays per prompt on the whole task)")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads (timed as process time)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for arch in args.archs.split(","):
        r = bench(arch, device, args.images, args.classes, args.batch, autocast=device.type == "cuda",
                  full_cut=not args.subset_cut)
        rows.append(r)
        print(r, flush=True)
    lines = ["| arch | device, precision | images x prompts | branch cut | s/image evalkit | s/image branch | ratio (time) | "
             "GFLOPs/prompt evalkit | GFLOPs/prompt branch | max abs diff (of max |score|) | largest logits block (MiB) branch / evalkit |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['device']}, {r['precision']} | {r['images']} x {r['prompts']} | {r['branch_cut']} | "
                     f"{r['s_per_image_evalkit']:.3f} | {r['s_per_image_branch']:.3f} | {r['ratio']:.1f}x | "
                     f"{r['gflops_per_prompt_evalkit']:.3f} | {r['gflops_per_prompt_branch']:.3f} | "
                     f"{r['max_abs_diff']:.1e} (of {r['score_scale']:.0f}) | {r['branch_logits_mb']:.0f} / {r['evalkit_logits_mb']:.0f} |")
    table = "\n".join(lines)
    print(table)
    if args.record:
        machine = f"{platform.node()}, {platform.processor() or platform.machine()}, torch {torch.__version__}, " \
                  f"{torch.get_num_threads()} threads"
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## Generative zero-shot classification: evalkit vs the branch's loop (bench_generative.py)\n\n"
                    f"{time.strftime('%Y-%m-%d')}, {machine}. Command: `python bench/bench_generative.py "
                    f"{' '.join(argv if argv is not None else sys.argv[1:])}`. Random weights; ImageNet's first "
                    f"{args.classes} classes x 80 templates; scores checked equal.\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
