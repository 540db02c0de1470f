"""Retrieval data readers and the scoring core, without a trained model: layouts, odd captions, bad input,
exact ties resolved as clip_benchmark (torch.topk) resolves them, and blocked scoring."""

from __future__ import annotations

import io
import json
import math
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _embedded import DATA
from clip_benchmark.metrics import zeroshot_retrieval as cb

from evalkit.data.formats.captions import open_retrieval
from evalkit.data.sources import DataError
from evalkit.tasks.protocols.zeroshot_retrieval import retrieval_hits, retrieval_metrics

COCO_JSON = DATA / "mscoco" / "coco_test_karpathy.json"
FLICKR_TXT = DATA / "flickr30k" / "flickr30k_test_karpathy.txt"


# ------------------------------------------------------------------------------------------ layouts


def test_three_embedded_layouts_give_the_same_captions_in_the_same_order():
    coco = open_retrieval(DATA / "mscoco", "test")
    flickr = open_retrieval(DATA / "flickr30k", "test")
    wds = open_retrieval(DATA / "wds_shapes_captions", "test")
    assert (coco.meta["format"], flickr.meta["format"], wds.meta["format"]) == ("coco", "flickr", "wds")
    assert len(coco) == len(flickr) == len(wds) == 400
    assert list(coco.targets) == list(flickr.targets) == list(wds.targets)
    assert coco.ids[0].endswith("val2014/COCO_val2014_000000000001.jpg")


def _coco_copy(tmp_path: Path, edit) -> Path:
    """A COCO-layout root in tmp_path sharing the embedded images, with an edited annotation file."""
    root = tmp_path / "coco"
    root.mkdir()
    (root / "val2014").symlink_to(DATA / "mscoco" / "val2014", target_is_directory=True)
    data = json.loads(COCO_JSON.read_text())
    edit(data)
    (root / "coco_test_karpathy.json").write_text(json.dumps(data, indent=1))
    return root


def test_coco_images_with_other_than_five_captions_and_empty_captions(tmp_path):
    def edit(d):
        d["images"] = d["images"][:6]
        keep = {img["id"] for img in d["images"]}
        anns = [a for a in d["annotations"] if a["image_id"] in keep]
        by_img: dict[int, list] = {}
        for a in anns:
            by_img.setdefault(a["image_id"], []).append(a)
        ids = sorted(by_img)
        by_img[ids[0]] = by_img[ids[0]][:1]  # one caption
        extra = dict(by_img[ids[1]][0], id=10**6, caption="")  # an empty caption, sixth
        by_img[ids[1]].append(extra)
        d["annotations"] = [a for i in ids for a in by_img[i]]

    src = open_retrieval(_coco_copy(tmp_path, edit), "test")
    assert [len(c) for c in src.targets] == [1, 6, 5, 5, 5, 5]
    assert src.targets[1][-1] == ""


def test_coco_order_is_sorted_image_id_and_annotation_order(tmp_path):
    def edit(d):
        d["images"] = list(reversed(d["images"][:3]))
        keep = {img["id"] for img in d["images"]}
        d["annotations"] = list(reversed([a for a in d["annotations"] if a["image_id"] in keep]))

    src = open_retrieval(_coco_copy(tmp_path, edit), "test")
    ref = open_retrieval(DATA / "mscoco", "test")
    assert [Path(i).name for i in src.ids] == [Path(i).name for i in ref.ids[:3]]
    assert [list(reversed(c)) for c in src.targets] == list(ref.targets[:3])


@pytest.mark.parametrize("edit, expect", [
    (lambda d: d["images"].append({"id": 99999, "file_name": "COCO_val2014_missing.jpg"}) or
     d["annotations"].append({"id": 99999, "image_id": 99999, "caption": "x"}), "COCO_val2014_missing.jpg"),
    (lambda d: d["annotations"].append({"id": 99999, "image_id": 424242, "caption": "x"}), "annotations[2000] (id 99999)"),
    (lambda d: d["images"].append({"id": 99999, "file_name": d["images"][0]["file_name"]}), "has no caption"),
    (lambda d: d["annotations"][3].pop("caption"), "annotations[3]"),
    (lambda d: d["annotations"][4].update(caption=None), "'caption' must be a string"),
    (lambda d: d["annotations"][5].update(id=d["annotations"][6]["id"]), "repeats an annotation id"),
    (lambda d: d.pop("annotations"), "'images' and 'annotations'"),
])
def test_bad_coco_annotations_name_the_file_and_entry(tmp_path, edit, expect):
    root = _coco_copy(tmp_path, edit)
    with pytest.raises(DataError, match="coco_test_karpathy.json") as e:
        open_retrieval(root, "test")
    assert expect in str(e.value)


def test_malformed_coco_json_names_line_and_column(tmp_path):
    root = _coco_copy(tmp_path, lambda d: None)
    ann = root / "coco_test_karpathy.json"
    lines = ann.read_text().splitlines()
    lines[7] = lines[7] + " ,,"
    ann.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"coco_test_karpathy.json:8:\d+: not valid JSON"):
        open_retrieval(root, "test")


def _flickr_copy(tmp_path: Path, lines: list[str]) -> Path:
    root = tmp_path / "flickr"
    root.mkdir()
    for f in sorted(DATA.joinpath("flickr30k").glob("*.jpg"))[:3]:
        (root / f.name).symlink_to(f)
    (root / "flickr30k_test_karpathy.txt").write_text("\n".join(lines) + "\n")
    return root


def test_flickr_rules_follow_clip_benchmark(tmp_path):
    lines = ["image,caption", "1000001.jpg,b one, with a comma", "1000000.jpg,a one", "", "1000001.jpg,",
             "  1000000.jpg,a two  ", "1000002.jpg,c one"]
    src = open_retrieval(_flickr_copy(tmp_path, lines), "test")
    assert [Path(i).name for i in src.ids] == ["1000001.jpg", "1000000.jpg", "1000002.jpg"]  # first appearance
    assert list(src.targets) == [["b one, with a comma", ""], ["a one", "a two"], ["c one"]]
    from clip_benchmark.datasets.flickr import Flickr

    ref = Flickr(str(tmp_path / "flickr"), str(tmp_path / "flickr" / "flickr30k_test_karpathy.txt"))
    assert [c for _, c in ref.data] == list(src.targets)


@pytest.mark.parametrize("lines, expect", [
    (["image,caption", "1000000.jpg,a", "1000000.png,b"], r"flickr30k_test_karpathy.txt:3: expected"),
    (["image,caption", "1000000.jpg,a", "9.jpg,b"], r"flickr30k_test_karpathy.txt:3: image 9.jpg is not in"),
    (["1000000.jpg,a", "1000001.jpg,b"], r"flickr30k_test_karpathy.txt:1: the first line is a header"),
    (["image,caption"], r"no caption lines"),
])
def test_bad_flickr_annotations_name_the_file_and_line(tmp_path, lines, expect):
    with pytest.raises(DataError, match=expect):
        open_retrieval(_flickr_copy(tmp_path, lines), "test")


def _wds(tmp_path: Path, captions: list[str], kind: str = "retrieval") -> Path:
    root = tmp_path / "wds_x"
    (root / "test").mkdir(parents=True)
    (root / "dataset_type.txt").write_text(kind + "\n")
    (root / "test" / "nshards.txt").write_text("1\n")
    jpg = sorted(DATA.joinpath("flickr30k").glob("*.jpg"))[0].read_bytes()
    with tarfile.open(root / "test" / "0.tar", "w") as tf:
        for i, text in enumerate(captions):
            for ext, data in (("jpg", jpg), ("txt", text.encode())):
                info = tarfile.TarInfo(f"s{i:04d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return root


def test_wds_captions_split_lines_and_empty_captions_are_kept(tmp_path):
    src = open_retrieval(_wds(tmp_path, ["a\nb\nc", "one\n\nthree\n"]), "test")
    assert list(src.targets) == [["a", "b", "c"], ["one", "", "three"]]  # str.splitlines, as clip_benchmark


def test_wds_sample_without_captions_is_named(tmp_path):
    with pytest.raises(DataError, match=r"0.tar::s0001.jpg: image has no caption"):
        open_retrieval(_wds(tmp_path, ["a", ""]), "test")


def test_wds_classification_folder_is_refused(tmp_path):
    with pytest.raises(DataError, match="dataset_type.txt: says 'classification'"):
        open_retrieval(_wds(tmp_path, ["a"], kind="classification"), "test")


def test_unknown_layout_lists_the_formats(tmp_path):
    with pytest.raises(DataError, match="unrecognised layout.*coco_<split>_karpathy.json"):
        open_retrieval(tmp_path, "test")


def test_hf_folder_with_caption_lists(tmp_path):
    import datasets
    from PIL import Image

    ref = open_retrieval(DATA / "mscoco", "test")
    n = 7
    ds = datasets.Dataset.from_dict(
        {"image": [Image.open(ref.ids[i]).convert("RGB") for i in range(n)], "captions": [ref.targets[i] for i in range(n)]},
        features=datasets.Features({"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}),
    )
    datasets.DatasetDict({"test": ds}).save_to_disk(str(tmp_path / "hf"))
    src = open_retrieval(tmp_path / "hf", "test")
    assert list(src.targets) == list(ref.targets[:n])


# ------------------------------------------------------------------------------------------ scoring


class _Lookup(torch.nn.Module):
    """A 'model' whose images and texts are indices into fixed feature tables (for clip_benchmark)."""

    def __init__(self, images: torch.Tensor, texts: torch.Tensor) -> None:
        super().__init__()
        self.images, self.texts = images, texts

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.images[x.long()]

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.texts[tokens.long()]


def _clip_benchmark(images: torch.Tensor, texts: torch.Tensor, caption_counts: list[int], batch_size: int):
    model = _Lookup(images, texts)
    batches, start, t = [], 0, 0
    while start < len(images):
        idx = torch.arange(start, min(start + batch_size, len(images)))
        caps = []
        for i in idx.tolist():
            caps.append([str(t + j) for j in range(caption_counts[i])])
            t += caption_counts[i]
        batches.append((idx, caps))
        start += batch_size
    tokenizer = lambda xs: torch.tensor([int(x) for x in xs])  # noqa: E731
    return cb.evaluate(model, batches, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])


def _ours(images, texts, caption_counts, block_mb=256.0):
    text_image = torch.repeat_interleave(torch.arange(len(images)), torch.tensor(caption_counts))
    hits = retrieval_hits(F.normalize(texts, dim=-1), F.normalize(images, dim=-1), text_image, [1, 5, 10], block_mb)
    return retrieval_metrics(hits, [1, 5, 10]), hits


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_ties_are_resolved_as_clip_benchmark_resolves_them(seed):
    """Features on few one-hot directions: most scores tie exactly (0 or 1), so which tied candidate
    topk returns decides every hit. Blocks of one row must agree with the whole matrix too."""
    g = torch.Generator().manual_seed(seed)
    n_images, dim = 60, 4
    images = F.one_hot(torch.randint(dim, (n_images,), generator=g), dim).float()
    counts = torch.randint(1, 8, (n_images,), generator=g).tolist()
    texts = F.one_hot(torch.randint(dim, (sum(counts),), generator=g), dim).float()
    theirs = _clip_benchmark(images, texts, counts, batch_size=17)
    for block_mb in (256.0, 1e-9):
        ours, hits = _ours(images, texts, counts, block_mb)
        for k, v in theirs.items():
            assert math.isclose(ours[k], v, abs_tol=1e-6), (block_mb, k, ours[k], v)
    # ties matter here: an optimistic rank (count of strictly better candidates) would disagree
    optimistic = (hits["image"]["rank"] < 1).float().mean().item()
    assert not math.isclose(optimistic, ours["image_retrieval_recall@1"], abs_tol=1e-6)


def test_random_features_and_blocks_match_clip_benchmark():
    g = torch.Generator().manual_seed(3)
    n_images = 90
    counts = torch.randint(1, 8, (n_images,), generator=g).tolist()
    images, texts = torch.randn(n_images, 16, generator=g), torch.randn(sum(counts), 16, generator=g)
    texts[5] = texts[40]  # duplicate captions tie exactly
    theirs = _clip_benchmark(images, texts, counts, batch_size=32)
    for block_mb in (256.0, 0.001):
        ours, _ = _ours(images, texts, counts, block_mb)
        for k, v in theirs.items():
            assert math.isclose(ours[k], v, abs_tol=1e-6), (block_mb, k, ours[k], v)
        assert ours["mean_recall@1"] == pytest.approx((theirs["image_retrieval_recall@1"] + theirs["text_retrieval_recall@1"]) / 2)


def test_k_beyond_the_candidates_is_nan():
    ours, _ = _ours(torch.eye(3), torch.eye(3).repeat_interleave(2, 0), [2, 2, 2])
    assert math.isnan(ours["image_retrieval_recall@5"]) and math.isnan(ours["image_retrieval_recall@10"])
    assert ours["text_retrieval_recall@5"] == 1.0 and math.isnan(ours["text_retrieval_recall@10"])
    assert ours["image_retrieval_recall@1"] == 1.0

