"""The Hugging Face `datasets` format (a local save_to_disk folder) gives the same numbers as the folder layout."""

from __future__ import annotations

import datasets
import numpy as np
from _embedded import DATA
from _util import TINY_S, save_training_checkpoint, tiny_clip
from PIL import Image

import evalkit
from evalkit.models.spec import ModelSpec


def test_hf_save_to_disk_matches_image_folder(tmp_path):
    classnames = (DATA / "imagenet_folder" / "classnames.txt").read_text().split("\n")
    classnames = [c for c in classnames if c]
    class_dirs = sorted((DATA / "imagenet_folder" / "val").iterdir())
    images, labels = [], []
    for idx, d in enumerate(class_dirs):
        for f in sorted(d.iterdir()):
            images.append(Image.open(f).convert("RGB"))
            labels.append(idx)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classnames)})
    ds = datasets.DatasetDict({"val": datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)})
    ds.save_to_disk(str(tmp_path / "hf_shapes"))
    ckpt = save_training_checkpoint(tiny_clip(TINY_S, seed=5), tmp_path / "epoch_1.pt")
    spec = ModelSpec(model=str(TINY_S), pretrained=str(ckpt))
    a = evalkit.evaluate(spec, ["shapes"], data_root=str(tmp_path / "hf_shapes"), out=tmp_path / "a", device="cpu", cache_dir=None)
    b = evalkit.evaluate(spec, ["shapes"], data_root=str(DATA / "imagenet_folder"), out=tmp_path / "b", device="cpu", cache_dir=None)
    assert (a.status == "ok").all() and (b.status == "ok").all()
    # JPEG pixels were re-encoded losslessly as PNG by datasets.Image(), so the inputs are identical
    np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), atol=1e-6)
