"""The linear probe equals clip_benchmark 1.6.2's `linear_probe.evaluate` (the oracle, patched only to
run on the CPU) on a trained tiny CLIP of the embedded world: its wds_shapes train split (200 images)
to fit, the 400 test images to score; without a validation set (weight decay 0), with the weight-decay
search on a seeded 20 % of the train split, and 10-shot with the search.

Tolerance, established here: both tools compute the same fits (same init, same minibatch order, same
AdamW arithmetic; evalkit's gradients are the closed form of the mean cross-entropy and its candidates
share batched matmuls), so weights differ by float rounding only (~1e-7, see test_linear_probe.py).
A test prediction can flip only at a near-tie of two logits, so: the same chosen weight decay, and
lp_acc1 / lp_acc5 / lp_mean_per_class_recall within one test sample (1/400) of clip_benchmark's.
Measured: identical on all three settings (chosen decays 0, 0.562 and 1e-6; lp_acc1 0.79, 0.7825, 0.79).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import open_clip
import pytest
import torch
from _embedded import DATA, trained_checkpoint
from clip_benchmark.datasets.builder import build_dataset
from clip_benchmark.metrics import linear_probe as cb

import evalkit
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.spec import ModelSpec
from evalkit.tasks.protocols.linear_probe import split_train_val

ROOT = DATA / "wds_shapes"
N_TEST = 400


class _CpuCalledCuda(str):
    """The device string handed to the oracle: 'cpu' to torch, equal to 'cuda' for its `assert device == 'cuda'`."""

    def __new__(cls) -> _CpuCalledCuda:
        return str.__new__(cls, "cpu")

    def __eq__(self, other: object) -> bool:
        return other == "cuda" or str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.fixture
def on_cpu(monkeypatch):
    """clip_benchmark's probe calls `.cuda()` on modules and tensors: on this machine, a no-op."""
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    open_clip.add_model_config(str(cfg))
    bare = tmp_path_factory.mktemp("bare") / "weights.pt"
    torch.save(read_state_dict(ckpt), bare)
    model, _, preprocess = open_clip.create_model_and_transforms(cfg.stem, pretrained=str(bare))
    return ckpt, cfg, model.eval(), preprocess


def _loader(dataset) -> torch.utils.data.DataLoader:
    """A loader as clip_benchmark's CLI builds it (no shuffle, 0 workers), with its own generator: the
    iterator then draws its base seed from it, and the global RNG stays as seeded for the probe."""
    return torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=False, num_workers=0,
                                       generator=torch.Generator())


def _oracle(trained, tmp_path: Path, val_proportion: float | None, fewshot_k: int) -> dict:
    """clip_benchmark's evaluate(), featurizing the datasets itself; the global RNG seeded right before
    the call, as `torch.manual_seed(seed)` (its CLI seeds at start-up, then builds the model)."""
    _, _, model, preprocess = trained
    train = build_dataset("wds/wds_shapes", root=str(ROOT), transform=preprocess, split="train")
    test = build_dataset("wds/wds_shapes", root=str(ROOT), transform=preprocess, split="test")
    train = list(train)  # an indexable copy of the wds train split (a WebDataset cannot be split: the point)
    val = None
    if val_proportion is not None:  # evalkit's seeded random_split of the train images, as the CLI splits them
        tr, va = split_train_val(len(train), val_proportion, 0)
        train, val = torch.utils.data.Subset(train, tr), torch.utils.data.Subset(train, va)
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its ~20 fits of tiny kernels: threads only add overhead on a busy machine
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return cb.evaluate(model, _loader(train), _loader(test), fewshot_k, 64, 0, 0.1, 10, "tiny", 0,
                               str(tmp_path / "features"), _CpuCalledCuda(),
                               val_dataloader=_loader(val) if val is not None else None, normalize=True, amp=False)
    finally:
        torch.set_num_threads(threads)


def _evalkit(trained, tmp_path: Path, extra: str) -> dict:
    ckpt, cfg, _, _ = trained
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "probe.yaml").write_text(f"name: probe\ninclude: wds_shapes_lp\n{extra}")
    table = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), [str(tasks / "probe.yaml")],
                             out=tmp_path / "out", device="cpu", precision="fp32", cache_dir=tmp_path / "cache")
    assert (table.status == "ok").all(), table.error.tolist()
    return dict(zip(table.metric, table.value))


def _compare(ours: dict, theirs: dict) -> None:
    assert ours["weight_decay"] == pytest.approx(theirs["weight_decay"], rel=1e-12), (ours, theirs)
    for k in ("lp_acc1", "lp_acc5", "lp_mean_per_class_recall"):
        assert math.isclose(ours[k], theirs[k], abs_tol=1 / N_TEST + 1e-9), (k, ours[k], theirs[k])
    assert ours["lp_acc1"] > 0.5  # trained features: far above the 10 % of chance


def test_no_validation_set_weight_decay_zero(trained, tmp_path, on_cpu):
    theirs = _oracle(trained, tmp_path, None, -1)
    ours = _evalkit(trained, tmp_path, "val_proportion: null\n")
    assert theirs["weight_decay"] == 0 and ours["weight_decay"] == 0
    _compare(ours, theirs)


def test_weight_decay_search_full_data(trained, tmp_path, on_cpu):
    theirs = _oracle(trained, tmp_path, 0.2, -1)
    assert theirs["weight_decay"] > 1e-3  # the search moved far from where it starts (measured: 0.562)
    _compare(_evalkit(trained, tmp_path, ""), theirs)


def test_weight_decay_search_10_shot(trained, tmp_path, on_cpu):
    theirs = _oracle(trained, tmp_path, 0.2, 10)
    _compare(_evalkit(trained, tmp_path, "fewshot_k: 10\n"), theirs)
