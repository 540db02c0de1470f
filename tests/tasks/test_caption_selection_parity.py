"""`image_caption_selection` equals clip_benchmark 1.6.2's `image_caption_selection.evaluate` (fp32,
amp=False) per instance, on the same model and data: SugarCrepe and Winoground (release and Hugging
Face layouts), with a trained tiny CLIP of the embedded world and with a random-weight one (mostly wrong,
so verdicts go both ways). The oracle reads the data with clip_benchmark's own dataset classes.
"""

from __future__ import annotations

import math

import datasets
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from _caption_sets import make_sugar_crepe, make_winoground_hf, make_winoground_release, winoground_dataset
from _embedded import trained_checkpoint
from _util import TINY_S, save_training_checkpoint, tiny_clip
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.datasets.sugar_crepe import SugarCrepe
from clip_benchmark.metrics import image_caption_selection as cb

import evalkit
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.spec import ModelSpec

N_SUGAR, N_WINO = 10, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sel")
    return {"sugar": make_sugar_crepe(root / "sugar_crepe", n=N_SUGAR, subsets=("add_att", "swap_obj")),
            "release": make_winoground_release(root / "wino_release", n=N_WINO),
            "hf": make_winoground_hf(root / "wino_hf", n=N_WINO)}


def _models(tmp_path_factory):
    """(name, checkpoint, config, open_clip model, preprocess, tokenizer): trained and random tiny CLIPs."""
    out = []
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    random_ckpt = save_training_checkpoint(tiny_clip(TINY_S, seed=3), tmp_path_factory.mktemp("rand") / "epoch_1.pt")
    for name, path, config in (("trained", ckpt, cfg), ("random", random_ckpt, TINY_S)):
        open_clip.add_model_config(str(config))
        bare = tmp_path_factory.mktemp("bare") / "weights.pt"
        torch.save(read_state_dict(path), bare)
        model, _, preprocess = open_clip.create_model_and_transforms(config.stem, pretrained=str(bare))
        out.append((name, path, config, model.eval(), preprocess, open_clip.get_tokenizer(config.stem)))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _models(tmp_path_factory)


def _evalkit(ckpt, cfg, task: str, root, out) -> tuple[dict[str, float], pd.DataFrame]:
    table = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), [task], data_root=str(root), out=out,
                             device="cpu", precision="fp32", log_samples=True, cache_dir=None, num_workers=0, batch_size=5,
                             text_batch_size=7)
    assert (table.status == "ok").all(), table.error.tolist()
    samples = pd.read_parquet(next((out / "samples").glob("*.parquet")))
    return dict(zip(table.metric, table.value, strict=True)), samples


def _oracle(model, tokenizer, dataset) -> tuple[dict[str, float], list[dict[str, float]]]:
    """clip_benchmark on the whole set (batches of 4) and on each instance alone (its 0/1 verdicts)."""
    def run(ds, bs):
        loader = torch.utils.data.DataLoader(ds, batch_size=bs, num_workers=0, collate_fn=image_captions_collate_fn)
        return cb.evaluate(model, loader, tokenizer, "cpu", amp=False)

    per = [run(torch.utils.data.Subset(dataset, [k]), 1) for k in range(len(dataset))]
    return run(dataset, 4), per


def _oracle_scores(model, tokenizer, dataset, k: int) -> torch.Tensor:
    imgs, caps = dataset[k]
    imgs = imgs if imgs.dim() == 4 else imgs[None]
    with torch.no_grad():
        return F.normalize(model.encode_image(imgs), dim=-1) @ F.normalize(model.encode_text(tokenizer(caps)), dim=-1).T


def _check(ours: tuple[dict, pd.DataFrame], theirs: tuple[dict, list[dict]], model, tokenizer, dataset) -> None:
    metrics, samples = ours
    whole, per = theirs
    assert len(samples) == len(per) == len(dataset)
    for m in ("image_acc", "text_acc", "acc"):
        assert math.isclose(metrics[m], whole[m], abs_tol=1e-6), (m, metrics[m], whole[m])
    for k, row in samples.iterrows():
        assert bool(row.text_correct) == bool(per[k]["text_acc"]), k
        assert bool(row.image_correct) == bool(per[k]["image_acc"]), k
        assert bool(row.correct) == bool(per[k]["acc"]), k
        expect = _oracle_scores(model, tokenizer, dataset, k)
        torch.testing.assert_close(torch.tensor(list(row.scores), dtype=torch.float32).view_as(expect), expect, atol=1e-5, rtol=0)


def test_sugar_crepe_equals_clip_benchmark_per_instance(data, models, tmp_path):
    for name, ckpt, cfg, model, preprocess, tokenizer in models:
        for subset in ("add_att", "swap_obj") if name == "trained" else ("swap_obj",):
            oracle_ds = SugarCrepe(str(data["sugar"] / "val2017"), str(data["sugar"] / f"{subset}.json"), transform=preprocess)
            ours = _evalkit(ckpt, cfg, f"sugar_crepe/{subset}", data["sugar"], tmp_path / f"{name}_{subset}")
            _check(ours, _oracle(model, tokenizer, oracle_ds), model, tokenizer, oracle_ds)
            assert ours[0]["image_acc"] == 1.0 and ours[0]["acc"] == ours[0]["text_acc"]  # one image per instance
            if name == "trained":
                assert ours[0]["acc"] >= 0.75, ours[0]  # its own caption against another image's: chance is 0.5


def test_winoground_equals_clip_benchmark_per_instance_in_both_layouts(data, models, tmp_path, monkeypatch):
    from clip_benchmark.datasets import winoground

    # clip_benchmark reads facebook/winoground from the hub; here it gets the rows our two layouts hold
    monkeypatch.setattr(datasets, "load_dataset", lambda name, cache_dir=None: {"test": winoground_dataset(N_WINO)})
    verdicts = {}
    for name, ckpt, cfg, model, preprocess, tokenizer in models:
        oracle_ds = winoground.WinoGround(root=str(tmp_path), transform=preprocess)
        theirs = _oracle(model, tokenizer, oracle_ds)
        for layout in ("release", "hf"):
            ours = _evalkit(ckpt, cfg, "winoground", data[layout], tmp_path / f"{name}_{layout}")
            _check(ours, theirs, model, tokenizer, oracle_ds)
            verdicts[name, layout] = ours[1][["text_correct", "image_correct"]].to_numpy()
    both = [verdicts["trained", "hf"], verdicts["random", "hf"]]
    assert 0 < sum(v.sum() for v in both) < sum(v.size for v in both)  # both verdicts occur: the match means something
    assert (verdicts["trained", "release"] == verdicts["trained", "hf"]).all()
