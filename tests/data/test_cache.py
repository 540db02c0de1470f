"""The decode-once cache: cold, warm and uncached paths give the same pixels, those pixels give
open_clip's own preprocessed tensors, and the read-ahead batches come back whole and in order."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from _embedded import DATA

from evalkit.data.cache import decoded_images, entry_dir, host_batches, list_entries
from evalkit.data.formats.wds import read_wds
from evalkit.data.preprocess import PreprocessCfg, normalize

CFG = PreprocessCfg(size=48)


@pytest.fixture(scope="module")
def source():
    return read_wds(DATA / "wds_shapes", "test")


def test_cold_warm_and_uncached_pixels_are_identical(source, tmp_path, monkeypatch):
    import evalkit.data.cache as cache

    cold = decoded_images(source, CFG, tmp_path, num_workers=2)
    assert entry_dir(source, CFG, tmp_path).joinpath("pixels.npy").is_file()
    decode = cache.decode_all
    monkeypatch.setattr(cache, "decode_all", lambda *a, **k: pytest.fail("a warm cache decoded again"))
    warm = decoded_images(source, CFG, tmp_path, num_workers=0)
    monkeypatch.setattr(cache, "decode_all", decode)
    uncached = decoded_images(source, CFG, None, num_workers=0)
    assert cold.shape == (len(source), 3, 48, 48) and cold.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(cold), uncached)
    np.testing.assert_array_equal(np.asarray(warm), uncached)
    [entry] = list_entries(tmp_path)
    assert entry["n"] == len(source) and entry["pixel_key"] == CFG.pixel_key
    assert not list(tmp_path.rglob("*.tmp*"))  # nothing half-written left behind


def test_normalised_pixels_equal_open_clips_preprocess(source, tmp_path):
    pixels = decoded_images(source, CFG, tmp_path, num_workers=0)
    reference = open_clip.image_transform(48, is_train=False, mean=CFG.mean, std=CFG.std)
    for i in (0, 7, len(source) - 1):
        ours = normalize(torch.from_numpy(np.array(pixels[i : i + 1])), CFG)[0]
        torch.testing.assert_close(ours, reference(source.open(i)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("batch_size,workers,depth", [(64, 1, 3), (7, 2, 4), (1000, 2, 2), (5, 1, 1)])
def test_host_batches_whole_and_in_order(batch_size, workers, depth):
    pixels = np.random.default_rng(0).integers(0, 255, size=(403, 3, 4, 4), dtype=np.uint8)
    got = list(host_batches(pixels, batch_size, workers=workers, depth=depth))
    assert [(a, b) for a, b, _ in got] == [(s, min(s + batch_size, 403)) for s in range(0, 403, batch_size)]
    np.testing.assert_array_equal(torch.cat([t for _, _, t in got]).numpy(), pixels)
    assert all(t.dtype == torch.uint8 for _, _, t in got)
