"""Zero-shot retrieval equals clip_benchmark's `zeroshot_retrieval.evaluate` (fp32, amp=False) on the same
model and data: every recall to 1e-6, for the COCO, Flickr and wds layouts, on a trained tiny CLIP and
on a tiny MaMMUT (random weights moved off init: no trained tiny MaMMUT exists in the grid yet).

evalkit scores with other image batches, caption batches of its own size and blocked similarities, so
equality also shows those choices do not change a number.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pandas as pd
import pytest
import torch
from _embedded import DATA, trained_checkpoint
from clip_benchmark.datasets.builder import build_dataset, image_captions_collate_fn
from clip_benchmark.metrics import zeroshot_retrieval as cb

import evalkit
from evalkit.embedded.grid import model_config_path
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.spec import ModelSpec

RUN = "tinyclip-S_s2k"
RECALLS = [f"{d}_retrieval_recall@{k}" for d in ("image", "text") for k in (1, 5, 10)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ckpt, cfg = trained_checkpoint(RUN)
    open_clip.add_model_config(str(cfg))
    bare = tmp_path_factory.mktemp("bare") / "weights.pt"
    torch.save(read_state_dict(ckpt), bare)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.stem, pretrained=str(bare))
    return ckpt, cfg, model.eval(), preprocess, open_clip.get_tokenizer(cfg.stem)


def _clip_benchmark(model, tokenizer, dataset, batch_size: int = 37) -> dict[str, float]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0,
                                         collate_fn=image_captions_collate_fn)
    return cb.evaluate(model, loader, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])


def _evalkit(ckpt: Path, cfg: Path, task: str, data_root: str, tmp_path: Path, **kw) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / f"out_{len(list(tmp_path.glob('out_*')))}"
    table = evalkit.evaluate(
        ModelSpec(model=str(cfg), pretrained=str(ckpt)), [task], data_root=data_root, out=out, device="cpu",
        precision="fp32", log_samples=True, cache_dir=tmp_path / "cache", **{"batch_size": 64, "text_batch_size": 300, **kw},
    )
    assert (table.status == "ok").all(), table.error.tolist()
    samples = pd.read_parquet(next((out / "samples").glob("*.parquet")))
    return dict(zip(table.metric, table.value, strict=True)), samples


def _compare(ours: tuple[dict, pd.DataFrame], theirs: dict[str, float], trained_model: bool = True) -> None:
    metrics, samples = ours
    for k in RECALLS:
        assert math.isclose(metrics[k], theirs[k], abs_tol=1e-6), (k, metrics[k], theirs[k])
    assert math.isclose(metrics["mean_recall@1"],
                        (theirs["image_retrieval_recall@1"] + theirs["text_retrieval_recall@1"]) / 2, abs_tol=1e-6)
    for direction in ("image", "text"):  # the sample log reproduces the metrics
        rows = samples[samples.direction == f"{direction}_retrieval"]
        for k in (1, 5, 10):
            assert math.isclose(rows[f"hit@{k}"].mean(), metrics[f"{direction}_retrieval_recall@{k}"], abs_tol=1e-6)
        assert ((rows["rank"] < 1) >= rows["hit@1"]).all()  # ranks count strictly better candidates
    if trained_model:
        assert metrics["text_retrieval_recall@10"] > 0.1 and metrics["image_retrieval_recall@10"] > 0.1  # chance: 0.025


# (clip_benchmark dataset, its root, evalkit task, evalkit data root, clip_benchmark batch, evalkit batch sizes)
LAYOUTS = {
    "coco": ("mscoco_captions", DATA / "mscoco", "shapes_coco", str(DATA / "mscoco"), 37, {}),
    "flickr": ("flickr30k", DATA / "flickr30k", "shapes_flickr", str(DATA / "flickr30k"), 50,
               {"batch_size": 19, "text_batch_size": 64}),
    "wds": ("wds/wds_shapes_captions", DATA / "wds_shapes_captions", "wds/wds_shapes_captions", str(DATA / "{dataset}"),
            64, {"batch_size": 23}),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_clip_benchmark(trained, tmp_path, layout):
    ckpt, cfg, model, preprocess, tok = trained
    cb_name, cb_root, task, root, cb_batch, ours_kw = LAYOUTS[layout]
    ds = build_dataset(cb_name, root=str(cb_root), transform=preprocess, split="test", task="zeroshot_retrieval")
    theirs = _clip_benchmark(model, tok, ds, batch_size=cb_batch)
    ours = _evalkit(ckpt, cfg, task, root, tmp_path, **ours_kw)
    _compare(ours, theirs)


def test_uneven_and_empty_captions_match_clip_benchmark(trained, tmp_path):
    """1 to 7 captions per image, some empty (kept, tokenized as clip_benchmark tokenizes them)."""
    ckpt, cfg, model, preprocess, tok = trained
    root = tmp_path / "coco_uneven"
    root.mkdir()
    (root / "val2014").symlink_to(DATA / "mscoco" / "val2014", target_is_directory=True)
    data = json.loads((DATA / "mscoco" / "coco_test_karpathy.json").read_text())
    by_img: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        by_img.setdefault(a["image_id"], []).append(a)
    anns, next_id = [], 10**7
    for n, (_, caps) in enumerate(sorted(by_img.items())):
        keep = caps[: 1 + n % 5]
        if n % 3 == 0:
            keep = keep + [dict(caps[0], id=next_id, caption=caps[-1]["caption"] + " again")]
            next_id += 1
        if n % 7 == 0:
            keep = keep + [dict(caps[0], id=next_id, caption=""), dict(caps[0], id=next_id + 1, caption="")]
            next_id += 2
        anns += keep
    data["annotations"] = anns
    (root / "coco_test_karpathy.json").write_text(json.dumps(data))
    ds = build_dataset("mscoco_captions", root=str(root), transform=preprocess, split="test", task="zeroshot_retrieval")
    assert {len(ds[i][1]) for i in range(len(ds))} == set(range(1, 9))
    theirs = _clip_benchmark(model, tok, ds)
    ours = _evalkit(ckpt, cfg, "shapes_coco", str(root), tmp_path)
    _compare(ours, theirs)


def test_hf_folder_matches_the_coco_layout(trained, tmp_path):
    import datasets
    from PIL import Image

    from evalkit.data.formats.captions import open_retrieval

    ckpt, cfg, *_ = trained
    ref = open_retrieval(DATA / "mscoco", "test")
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(p).convert("RGB") for p in ref.ids], "captions": list(ref.targets)},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}),
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    hf, _ = _evalkit(ckpt, cfg, "shapes_coco", str(tmp_path / "hf"), tmp_path)
    coco, _ = _evalkit(ckpt, cfg, "shapes_coco", str(DATA / "mscoco"), tmp_path)
    for k in [*RECALLS, "mean_recall@1"]:  # JPEG pixels re-encoded losslessly as PNG: identical inputs
        assert math.isclose(hf[k], coco[k], abs_tol=1e-6), (k, hf[k], coco[k])


# ------------------------------------------------------------------------------------------ MaMMUT


class _NoDoubleNorm(torch.nn.Module):
    """The fork's MaMMUT returns unnormalised features unless asked (open_clip convention); clip_benchmark
    normalises them itself."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(x, normalize=False)

    def encode_text(self, t: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(t, normalize=False)


@pytest.fixture(scope="module")
def mammut(tmp_path_factory):
    from open_clip.transform import PreprocessCfg as OCPreprocess
    from open_clip.transform import image_transform_v2

    from evalkit.models.factory import load_model
    from evalkit.models.families.mammut import MaMMUT

    cfg = model_config_path("mammut_tiny-S")
    torch.manual_seed(11)
    model = MaMMUT(json.loads(cfg.read_text()))
    with torch.no_grad():  # off init: init-time symmetries (zero biases, unit LN gains) would hide bugs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ckpt = tmp_path_factory.mktemp("mammut") / "epoch_1.pt"
    torch.save({"epoch": 1, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    lm = load_model(ModelSpec(model=str(cfg), pretrained=str(ckpt)), device="cpu")
    assert lm.family == "mammut"
    pp = lm.preprocess
    preprocess = image_transform_v2(OCPreprocess(size=pp.size, mean=pp.mean, std=pp.std, interpolation=pp.interpolation,
                                                 resize_mode=pp.resize_mode), is_train=False)
    return ckpt, cfg, _NoDoubleNorm(lm.model.eval()), preprocess, lm.tokenizer


@pytest.mark.parametrize("layout", ["coco", "flickr", "wds"])
def test_mammut_matches_clip_benchmark(mammut, tmp_path, layout):
    ckpt, cfg, model, preprocess, tok = mammut
    if layout == "coco":
        ds = build_dataset("mscoco_captions", root=str(DATA / "mscoco"), transform=preprocess, split="test", task="zeroshot_retrieval")
        task, root = "shapes_coco", str(DATA / "mscoco")
    elif layout == "flickr":
        ds = build_dataset("flickr30k", root=str(DATA / "flickr30k"), transform=preprocess, split="test", task="zeroshot_retrieval")
        task, root = "shapes_flickr", str(DATA / "flickr30k")
    else:
        ds = build_dataset("wds/wds_shapes_captions", root=str(DATA / "wds_shapes_captions"), transform=preprocess, split="test", task="zeroshot_retrieval")
        task, root = "wds/wds_shapes_captions", str(DATA / "{dataset}")
    theirs = _clip_benchmark(model, tok, ds)
    ours = _evalkit(ckpt, cfg, task, root, tmp_path)
    _compare(ours, theirs, trained_model=False)
    print("mammut", layout, {k: round(v, 6) for k, v in ours[0].items()})
