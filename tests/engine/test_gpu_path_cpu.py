"""The GPU path's host-side costs and hazards, checked on CPU (issue 15)."""

from __future__ import annotations

import dataclasses
import pickle
import threading

import numpy as np
import pytest
import torch
from _embedded import DATA

import evalkit.data.cache as cache
from evalkit.data.formats.captions import open_retrieval
from evalkit.data.formats.segmentation import open_segmentation
from evalkit.data.open import open_classification
from evalkit.data.preprocess import PreprocessCfg, normalize
from evalkit.data.sources import ImageSource


def _reference(pixels: torch.Tensor, cfg: PreprocessCfg) -> torch.Tensor:
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def test_normalize_builds_mean_and_std_once_per_config_and_device(monkeypatch):
    # Configs no other test uses, so the first call here is the first for them.
    a = PreprocessCfg(size=8, mean=(0.11, 0.22, 0.33), std=(0.44, 0.55, 0.66))
    b = PreprocessCfg(size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.125, 0.5))  # same pixel_key, other mean/std
    pixels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    want_a, want_b = _reference(pixels, a), _reference(pixels, b)
    first_a, first_b = normalize(pixels, a), normalize(pixels, b)

    made = []
    for name in ("tensor", "as_tensor", "from_numpy"):
        real = getattr(torch, name)
        monkeypatch.setattr(torch, name, lambda *args, _real=real, _name=name, **kw: made.append(_name) or _real(*args, **kw))
    again = [(normalize(pixels, a), normalize(pixels, b)) for _ in range(3)]
    assert made == [], f"normalize built {made} on calls after the first (a host-to-device copy per batch on a GPU)"

    for got_a, got_b in [(first_a, first_b), *again]:
        torch.testing.assert_close(got_a, want_a, atol=1e-6, rtol=0)
        torch.testing.assert_close(got_b, want_b, atol=1e-6, rtol=0)
    assert normalize(pixels, a, torch.bfloat16).dtype == torch.bfloat16


def test_normalize_mean_std_usable_across_threads_and_grad_modes():
    cfg = PreprocessCfg(size=4, mean=(0.3, 0.2, 0.1), std=(0.9, 0.8, 0.7))
    pixels = torch.randint(0, 256, (1, 3, 4, 4), dtype=torch.uint8)
    with torch.inference_mode():  # first built under inference mode ...
        normalize(pixels, cfg)
    x = pixels.float().requires_grad_()
    out = normalize(x, cfg)  # ... then used where autograd records
    out.sum().backward()
    # d/dx of (x / 255 - mean) / std: 1 / (255 std) per channel
    want = (1 / (255 * torch.tensor(cfg.std))).view(1, 3, 1, 1).expand_as(x)
    torch.testing.assert_close(x.grad, want)
    results, errors = [], []

    def work():
        try:
            results.append(normalize(pixels, cfg))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and all(torch.equal(r, results[0]) for r in results)


@pytest.fixture
def live_thread():
    """A thread alive for the whole test, as the engine's prefetch and fsync threads are."""
    stop = threading.Event()
    t = threading.Thread(target=stop.wait, name="test-live-thread", daemon=True)
    t.start()
    yield t
    stop.set()
    t.join()


def test_decode_workers_are_not_forked_while_threads_are_live(monkeypatch, live_thread):
    source = open_classification(DATA / "wds_shapes")
    cfg = PreprocessCfg(size=32)
    want = cache.decoded_images(source, cfg, None, num_workers=0)
    contexts = []
    real = cache.DataLoader

    def spy(*args, **kw):
        contexts.append(kw.get("multiprocessing_context"))
        return real(*args, **kw)

    monkeypatch.setattr(cache, "DataLoader", spy)
    assert threading.active_count() > 1
    got = cache.decoded_images(source, cfg, None, num_workers=2)
    np.testing.assert_array_equal(got, want)
    [ctx] = contexts
    assert ctx is not None, "workers started with the default context: fork, on Linux"
    assert ctx.get_start_method() != "fork"


def test_every_reader_source_can_go_to_a_worker_process():
    sources = [open_classification(DATA / "imagenet_folder"), open_classification(DATA / "wds_shapes"),
               open_retrieval(DATA / "mscoco"), open_retrieval(DATA / "flickr30k"),
               open_retrieval(DATA / "wds_shapes_captions"), open_segmentation(DATA / "ADEChallengeData2016")]
    cfg = PreprocessCfg(size=16)
    for s in sources:
        job = cache._Decode(dataclasses.replace(s, targets=[], meta={}, classnames=None, templates=None), cfg)
        back = pickle.loads(pickle.dumps(job))
        assert back.source.ids == s.ids
        np.testing.assert_array_equal(np.asarray(back.source.open(3)), np.asarray(s.open(3)))


def test_hf_source_decodes_in_forkserver_workers(tmp_path, live_thread):
    datasets = pytest.importorskip("datasets")
    from PIL import Image

    from evalkit.data.formats.hf import read_hf

    files = sorted((DATA / "imagenet_folder" / "val").rglob("*.JPEG"))[:70]
    ds = datasets.Dataset.from_dict({"image": [Image.open(f).convert("RGB") for f in files], "label": [0] * len(files)},
                                    features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}))
    ds.save_to_disk(str(tmp_path / "hf"))
    source = read_hf(str(tmp_path / "hf"), "val")
    cfg = PreprocessCfg(size=32)
    job = cache._Decode(source, cfg)
    assert cache._start_method(job, 2) in ("forkserver", "spawn")
    np.testing.assert_array_equal(cache.decoded_images(source, cfg, None, num_workers=2),
                                  cache.decoded_images(source, cfg, None, num_workers=0))


def test_start_method_by_threads_and_picklability(monkeypatch, live_thread):
    source = open_classification(DATA / "wds_shapes")
    cfg = PreprocessCfg(size=32)
    picklable = cache._Decode(source, cfg)
    lam = ImageSource(name="lam", ids=source.ids, opener=lambda i: source.open(i), targets=[], fingerprint="lam")
    unpicklable = cache._Decode(lam, cfg)
    assert cache._start_method(picklable, 0) == "in-process"
    assert cache._start_method(picklable, 2) in ("forkserver", "spawn")  # a thread is alive
    assert cache._start_method(unpicklable, 2) == "threads"
    monkeypatch.setattr(cache.threading, "active_count", lambda: 1)
    assert cache._start_method(unpicklable, 2) == "fork"  # nothing else running: fork is safe and cheapest
    monkeypatch.undo()
    # the thread path: same pixels, in order, through the same decode_all
    want = cache.decoded_images(source, cfg, None, num_workers=0)
    np.testing.assert_array_equal(cache.decoded_images(lam, cfg, None, num_workers=2), want)


def test_engine_lets_its_threads_finish_so_decoders_fork(monkeypatch, tmp_path):
    """The engine's prefetch and fsync threads are joined before images are decoded, so decode
    workers are forked (no forkserver start-up, no `__main__` guard needed in user scripts)."""
    from _util import TINY_S, save_training_checkpoint, tiny_clip

    from evalkit.engine import RunOptions, run
    from evalkit.models.spec import ModelSpec
    from evalkit.tasks.loader import get_task

    ckpts = [save_training_checkpoint(tiny_clip(TINY_S, seed=s), tmp_path / f"r{s}" / "epoch_1.pt") for s in (1, 2)]
    seen = []
    real = cache.DataLoader

    def spy(*args, **kw):
        ctx = kw.get("multiprocessing_context")
        ours = sorted(t.name for t in threading.enumerate() if t.name.startswith("evalkit-"))
        others = threading.active_count() - 1 - len(ours)  # threads earlier tests may have left running
        seen.append((ctx.get_start_method() if ctx else "fork", ours, others))
        return real(*args, **kw)

    monkeypatch.setattr(cache, "DataLoader", spy)
    specs = [ModelSpec(model=str(TINY_S), pretrained=str(p), name=p.parent.name) for p in ckpts]
    counts = run(specs, [get_task("shapes"), get_task("shapes_coco")],
                 RunOptions(out=tmp_path / "out", device="cpu", cache_dir=tmp_path / "cache", num_workers=2))
    assert counts["ok"] == 4
    assert len(seen) == 2 and all(ours == [] for _, ours, _ in seen)  # two datasets, none of the engine's threads
    assert all(method == "fork" for method, _, others in seen if others == 0)  # alone: workers forked
