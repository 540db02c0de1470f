"""`evalkit import clip-benchmark`: clip_benchmark result JSON files into the tidy table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
import pytest

from evalkit.cli.results import add_import_parser
from evalkit.results.importers import ImportError_, import_clip_benchmark
from evalkit.results.schema import TIDY_COLUMNS


def _dump(path: Path, dataset: str, model: str, pretrained: str, task: str, metrics: dict) -> None:
    """The exact dict clip_benchmark's cli.py dumps (dataset, model, pretrained, task, metrics, language)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"dataset": dataset, "model": model, "pretrained": pretrained, "task": task,
                                "metrics": metrics, "language": "en"}))


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "evals"
    run = "/ckpt/datacomp_s1B_bs_4096_mammut_ViT-B-32_ep8/checkpoints"
    _dump(root / "a" / "imagenet1k_epoch_4.json", "imagenet1k", "mammut_ViT-B-32", f"{run}/epoch_4.pt",
          "zeroshot_classification", {"acc1": 0.41, "acc5": 0.7, "mean_per_class_recall": 0.40})
    _dump(root / "a" / "imagenet1k_epoch_8.json", "imagenet1k", "mammut_ViT-B-32", f"{run}/epoch_8.pt",
          "zeroshot_classification", {"acc1": 0.47, "acc5": 0.75, "mean_per_class_recall": 0.46})
    _dump(root / "b" / "mscoco.json", "wds/mscoco_captions", "ViT-B-32", "/ckpt/clip_run7/checkpoints/epoch_2.pt",
          "zeroshot_retrieval", {"image_retrieval_recall@5": 0.5, "text_retrieval_recall@5": 0.66})
    return root


def test_import_rows_and_identity(tmp_path: Path) -> None:
    df = import_clip_benchmark([_tree(tmp_path)], gflops_per_sample={"mammut_ViT-B-32": 10.0},
                               samples_per_epoch=1e6)
    assert list(df.columns[: len(TIDY_COLUMNS)]) == list(TIDY_COLUMNS)
    assert len(df) == 3 + 3 + 2
    ep8 = df[(df.epoch == 8) & (df.metric == "acc1")].iloc[0]
    assert ep8.value == 0.47 and ep8.task == "imagenet1k" and ep8.family == "mammut"
    assert ep8.model == "datacomp_s1B_bs_4096_mammut_ViT-B-32_ep8" and ep8.arch == "mammut_ViT-B-32"
    assert ep8.samples_seen == 8e6 and ep8.gflops_total == 8e7 and ep8.status == "ok"
    coco = df[df.dataset == "mscoco_captions"]
    assert set(coco.metric) == {"image_retrieval_recall@5", "text_retrieval_recall@5"}
    assert (coco.family == "clip").all() and (coco.epoch == 2).all() and (coco.model == "clip_run7").all()
    assert coco.task_type.iloc[0] == "zeroshot_retrieval"


def test_cli_import_then_fit_reads_it(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_import_parser(parser.add_subparsers(dest="cmd", required=True))
    out = tmp_path / "imported.parquet"
    args = parser.parse_args(["import", "clip-benchmark", str(_tree(tmp_path)), "--out", str(out),
                              "--samples-per-epoch", "1e6"])
    assert args.func(args) == 0
    df = pd.read_parquet(out)
    assert len(df) == 8 and df.samples_seen.notna().all()
    from evalkit.fit.table import load_points

    pts = load_points(out, task="imagenet1k", metric="acc1", x="samples_seen")
    assert sorted(pts.x) == [4e6, 8e6] and pts.y.tolist() == pytest.approx([0.59, 0.53])


def test_epoch_from_file_name_when_path_has_none(tmp_path: Path) -> None:
    _dump(tmp_path / "r" / "cifar10_openai_epoch_12.json", "cifar10", "ViT-L-14", "openai",
          "zeroshot_classification", {"acc1": 0.9, "acc5": 0.99, "mean_per_class_recall": 0.9})
    df = import_clip_benchmark([tmp_path / "r"])
    assert (df.epoch == 12).all() and (df.model == "r").all()


def test_bad_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"dataset": "cifar10", "model": "m"}))
    with pytest.raises(ImportError_, match=r"x\.json: not a clip_benchmark result \(missing pretrained, metrics\)"):
        import_clip_benchmark([tmp_path])
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ImportError_, match="not a readable JSON"):
        import_clip_benchmark([tmp_path / "x.json"])
    with pytest.raises(ImportError_, match="no such file"):
        import_clip_benchmark([tmp_path / "missing"])
