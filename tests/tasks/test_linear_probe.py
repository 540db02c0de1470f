"""The linear_probe protocol's parts against references: the batched fit against separate
`torch.optim.AdamW` fits (and clip_benchmark's own `train`), the weight-decay search against the
reference's rule replayed on accuracy tables, exact accuracies on hand-checkable data, the bad-input
refusals before any work, a diverging checkpoint as one failed unit, one train pass per checkpoint."""

from __future__ import annotations

import contextlib
import io
import math
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from _embedded import DATA, trained_checkpoint

import evalkit
from evalkit.models.checkpoint import read_state_dict
from evalkit.models.spec import ModelSpec
from evalkit.tasks.base import open_task
from evalkit.tasks.loader import get_task, read_task_file, task_files
from evalkit.tasks.protocols import linear_probe as lp
from evalkit.tasks.spec import TaskError

WDS = DATA / "wds_shapes"


def _features(n: int, d: int, c: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    x = torch.nn.functional.normalize(centers[y] + 1.5 * torch.randn(n, d, generator=g), dim=-1)
    return x, y


def _separate_adamw_fit(x, y, wd, c, lr=0.1, epochs=10, batch_size=64, seed=0) -> torch.nn.Linear:
    """The reference's fit written out with torch's own modules: Linear after manual_seed, a shuffling
    DataLoader, AdamW, mean cross-entropy, the cosine lr set before each step."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(x.shape[1], c)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch_size, shuffle=True)
    total = epochs * len(loader)
    step = 0
    for _ in range(epochs):
        for xb, yb in loader:
            for group in opt.param_groups:
                group["lr"] = 0.5 * (1 + np.cos(np.pi * step / total)) * lr
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            step += 1
    return model


WDS_TRIED = [0.0, 1e-5, 1e-2, 0.3, 2.0]


def test_batched_fit_equals_separate_adamw_fits():
    x, y = _features(203, 24, 7)  # 203: a last minibatch of 11
    w, b = lp.train_probes(x, y, WDS_TRIED, 7, lr=0.1, epochs=10, batch_size=64, seed=0)
    assert w.shape == (len(WDS_TRIED), 24, 7) and b.shape == (len(WDS_TRIED), 7)
    for j, wd in enumerate(WDS_TRIED):
        ref = _separate_adamw_fit(x, y, wd, 7)
        assert (w[j] - ref.weight.detach().T).abs().max() < 1e-5, wd
        assert (b[j] - ref.bias.detach()).abs().max() < 1e-5, wd
    assert (w[0] - w[-1]).abs().max() > 1e-2  # the decay did act per candidate


def test_batched_fit_equals_clip_benchmark_train(monkeypatch):
    """clip_benchmark's own `train` (its `.cuda()` calls made no-ops on this CPU machine)."""
    from clip_benchmark.metrics import linear_probe as cb

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    x, y = _features(150, 16, 5, seed=3)
    w, b = lp.train_probes(x, y, [0.0, 0.05], 5, lr=0.1, epochs=4, batch_size=32, seed=7)
    for j, wd in enumerate([0.0, 0.05]):
        loader = torch.utils.data.DataLoader(cb.FeatureDataset(x, y), batch_size=32, shuffle=True, num_workers=0)
        with contextlib.redirect_stdout(io.StringIO()):
            ref = cb.train(loader, 16, 5, wd, 0.1, 4, False, "cpu", 7).module
        assert (w[j] - ref.weight.detach().T).abs().max() < 1e-5
        assert (b[j] - ref.bias.detach()).abs().max() < 1e-5


# ------------------------------------------------------------------------------------------ the search


def _reference_search(acc: list[int]) -> int:
    """clip_benchmark's find_peak loop, written out over a table of validation accuracies by index."""
    def find_peak(idxs):
        best, top = 0, 0
        for i in idxs:
            if top < acc[i]:
                best, top = i, acc[i]
        return best

    grid = np.logspace(-6, 2, num=97).tolist()
    init = [i for i, v in enumerate(grid) if v in np.logspace(-6, 2, num=7).tolist()]
    peak = find_peak(init)
    span = 8
    while span > 0:
        peak = find_peak([max(peak - span, 0), peak, min(peak + span, 96)])
        span //= 2
    return peak


@pytest.mark.parametrize("plan", ["all", "reach", "steps"])
def test_search_replays_the_reference_rule_on_any_accuracy_table(plan, monkeypatch):
    """Fits replaced by a table (each candidate's "weights" carry its index): for 300 random tables,
    many with ties and some all zero, the chosen index is the reference's, whatever the grouping."""
    table: list[int] = []

    def fake_train(x, y, wds, c, **kw):
        idx = torch.tensor([lp.WD_GRID.index(w) for w in wds], dtype=torch.float32)
        return idx.view(-1, 1, 1).expand(-1, 1, c).clone(), torch.zeros(len(wds), c)

    monkeypatch.setattr(lp, "train_probes", fake_train)
    monkeypatch.setattr(lp, "top1_hits", lambda w, b, x, y: [table[int(i)] for i in w[:, 0, 0].tolist()])
    rng = np.random.default_rng(0)
    x, y = torch.zeros(4, 1), torch.zeros(4, dtype=torch.long)
    for trial in range(300):
        top = [0, 1, 3, 40][trial % 4]
        table[:] = rng.integers(0, top + 1, size=97).tolist()
        res = lp.search_weight_decay(x, y, x, y, 2, lr=0.1, epochs=1, batch_size=1, seed=0, plan=plan)
        assert res.best == _reference_search(table), (trial, table)
        trained = [i for run in res.runs for i in run]
        assert len(trained) == len(set(trained))  # each candidate fitted once
        assert len(res.runs) == {"all": 1, "reach": 2, "steps": len(res.runs)}[plan] and len(res.runs) <= 5
        assert len(trained) == 97 if plan == "all" else len(trained) <= (37 if plan == "reach" else 15)


def test_plans_give_the_same_probe():
    x, y = _features(180, 12, 4, seed=5)
    xv, yv = _features(60, 12, 4, seed=6)
    found = {p: lp.search_weight_decay(x, y, xv, yv, 4, lr=0.1, epochs=3, batch_size=64, seed=0, plan=p)
             for p in ("all", "reach", "steps")}
    best = {f.best for f in found.values()}
    assert len(best) == 1
    (i,) = best
    for f in found.values():
        assert torch.allclose(f.probes[i][0], found["all"].probes[i][0], atol=1e-6)
        assert f.val_hits[i] == found["all"].val_hits[i]


def test_search_plan_by_size():
    assert lp.search_plan(32, 10, "cpu") == "reach"  # tiny: overheads dominate; two runs (7, then 30)
    assert lp.search_plan(512, 10, "cpu") == "steps"  # per-candidate work counts: the fewest fits
    assert lp.search_plan(512, 100, "cuda") == "all"  # a GPU's per-step overhead dominates: one run of 97
    assert lp.search_plan(768, 1000, "cuda") == lp.search_plan(768, 1000, "cpu") == "steps"  # ImageNet: fewest fits


def test_diverged_candidate_never_chosen():
    """lr 0.1 x wd 100 multiplies the weights by -9 per step: that fit overflows; it scores -1."""
    x, y = _features(128, 8, 3)
    res = lp.search_weight_decay(x, y, x, y, 3, lr=0.1, epochs=10, batch_size=16, seed=0, plan="all")
    assert res.val_hits[96] == -1 and res.best != 96 and res.val_hits[res.best] > 0


# ------------------------------------------------------------------------------------------ hand checks


def test_fewshot_selection_hand_checked():
    targets = [0, 1, 0, 1, 2, 0, 1, 2, 0]
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(3)).tolist()
    want, seen = [], {}
    for p in perm:  # the first 2 of each class in the seeded permutation, in its order
        if seen.get(targets[p], 0) < 2:
            seen[targets[p]] = seen.get(targets[p], 0) + 1
            want.append(p)
    assert lp.fewshot_select(targets, 2, 3) == want and len(want) == 6
    assert lp.fewshot_select(targets, -1, 3) == perm


def test_separable_two_classes_exact_accuracy():
    """Class 0 at +e1, class 1 at -e1 (small noise elsewhere): any sane probe is perfect on clean test
    points; with 3 of 20 test labels flipped, lp_acc1 is 17/20 and the per-class recall is hand-counted."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 2
    x = torch.nn.functional.normalize(torch.cat([(1 - 2 * y.float())[:, None], 0.1 * torch.randn(40, 3, generator=g)], 1), dim=1)
    w, b = lp.train_probes(x, y, [0.0], 2, lr=0.1, epochs=10, batch_size=8, seed=0)
    yt = torch.arange(20) % 2
    xt = torch.nn.functional.normalize(torch.cat([(1 - 2 * yt.float())[:, None], 0.1 * torch.randn(20, 3, generator=g)], 1), dim=1)
    logits = torch.addmm(b[0], xt, w[0])
    m = lp.probe_metrics(logits, yt)
    assert m["lp_acc1"] == 1.0 and m["lp_mean_per_class_recall"] == 1.0 and math.isnan(m["lp_acc5"])
    flipped = yt.clone()
    flipped[[0, 2, 1]] = 1 - flipped[[0, 2, 1]]  # two of class 0 and one of class 1 relabelled
    m = lp.probe_metrics(logits, flipped)
    # label 0 now: 8 predicted 0 + index 1 (predicted 1) -> recall 8/9; label 1: 9 predicted 1 + indices
    # 0 and 2 (predicted 0) -> 9/11
    assert ((flipped == 0).sum().item(), (flipped == 1).sum().item()) == (9, 11)
    assert m["lp_acc1"] == 17 / 20
    assert m["lp_mean_per_class_recall"] == pytest.approx((8 / 9 + 9 / 11) / 2, abs=1e-12)


# ------------------------------------------------------------------------------------------ bad input


def _task_file(tmp_path: Path, body: str, name: str = "probe") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\ninclude: wds_shapes_lp\n{body}")
    return path


@pytest.mark.parametrize("body, says", [
    ("val_proportion: 0\n", "strictly between 0 and 1"),
    ("val_proportion: 1.0\n", "strictly between 0 and 1"),
    ("val_proportion: -0.2\n", "strictly between 0 and 1"),
    ("val_split: val\n", "exclusive"),
    ("fewshot_k: 0\n", "fewshot_k must be"),
    ("epochs: 0\n", "epochs must be"),
    ("lr: 0\n", "lr must be positive"),
    ("train_split: test\n", "is the split the probe is scored on"),
    ("fewshot_k: ten\n", "must be int"),
])
def test_bad_options_refused_when_the_file_loads(tmp_path, body, says):
    path = _task_file(tmp_path, body)
    with pytest.raises(TaskError, match=says) as e:
        read_task_file(path, task_files())
    assert str(path) in str(e.value)


def test_data_without_train_split_is_refused_before_any_work(tmp_path):
    root = tmp_path / "wds_shapes"
    shutil.copytree(WDS, root, ignore=shutil.ignore_patterns("train"))
    with pytest.raises(TaskError, match=r"trains on split 'train' \(train_split\), but .* has no 'train' folder") as e:
        open_task(get_task("wds_shapes_lp"), root)
    assert "wds_shapes_lp.yaml" in str(e.value)


def test_fewshot_k_beyond_the_smallest_class_names_it(tmp_path):
    # the seeded 80 % of the 20-per-class train split keeps 15 to 17 per class; class 2 is the first at 15
    path = _task_file(tmp_path, "fewshot_k: 16\n")
    spec = read_task_file(path, task_files())
    with pytest.raises(TaskError, match=r"fewshot_k 16, but 'yellow triangle' \(class 2\) has only 15 images in "
                                        r"split 'train' after val_proportion .*lower fewshot_k to at most 15") as e:
        open_task(spec, WDS)
    assert str(path) in str(e.value)
    spec = read_task_file(_task_file(tmp_path, "fewshot_k: 21\nval_proportion: null\n", "all"), task_files())
    with pytest.raises(TaskError, match=r"fewshot_k 21, but 'red circle' \(class 0\) has only 20 images"):
        open_task(spec, WDS)
    open_task(read_task_file(_task_file(tmp_path, "fewshot_k: 20\nval_proportion: null\n", "ok"), task_files()), WDS)


def test_bad_task_fails_its_units_before_any_probe_work(tmp_path, monkeypatch):
    """Through the engine: the task is refused when it is opened (planning); its unit is failed with
    the message, and no image is encoded and no probe trained for it."""

    def no_work(*a, **k):
        raise AssertionError("probe work for a task that cannot run")

    monkeypatch.setattr(lp, "split_features", no_work)
    monkeypatch.setattr(lp, "train_probes", no_work)
    path = _task_file(tmp_path, "fewshot_k: 25\n")
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    table = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), [str(path)], out=tmp_path / "o",
                             device="cpu", precision="fp32", cache_dir=tmp_path / "cache")
    assert (table.status == "failed").all() and table.error.str.contains("fewshot_k 25, but").all()


# ------------------------------------------------------------------------------------------ end to end


def test_nan_checkpoint_fails_its_probe_unit_only(tmp_path):
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    state = read_state_dict(ckpt)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    specs = [ModelSpec(model=str(cfg), pretrained=str(bad)), ModelSpec(model=str(cfg), pretrained=str(ckpt))]
    table = evalkit.evaluate(specs, ["wds_shapes_lp"], out=tmp_path / "o", device="cpu", precision="fp32",
                             cache_dir=tmp_path / "cache")
    failed, ok = table[table.checkpoint == str(bad)], table[table.checkpoint == str(ckpt)]
    assert (failed.status == "failed").all() and len(failed) == 1
    assert failed.error.iloc[0].startswith("ProbeDiverged: task wds_shapes_lp:") and "NaN" in failed.error.iloc[0]
    assert (ok.status == "ok").all() and ok.set_index("metric").value["lp_acc1"] > 0.5


def test_probe_variants_share_one_train_pass_per_checkpoint(tmp_path, monkeypatch):
    """shapes, shapes_lp and shapes_lp10 on two checkpoints: per checkpoint the train split is encoded
    once for both probes, and the val split once for all three tasks (the engine's pass)."""
    import evalkit.engine.loop as loop

    calls: list[str] = []

    def counting(real):
        def encode(lm, source, needs, ctx, batch_size=None):
            calls.append(source.name)
            return real(lm, source, needs, ctx, batch_size)
        return encode

    monkeypatch.setattr(lp, "encode_images", counting(lp.encode_images))
    monkeypatch.setattr(loop, "encode_images", counting(loop.encode_images))
    specs = [ModelSpec(model=str(trained_checkpoint(r)[1]), pretrained=str(trained_checkpoint(r)[0]))
             for r in ("tinyclip-S_s2k", "tinyclip-M_s2k")]
    table = evalkit.evaluate(specs, ["shapes", "shapes_lp", "shapes_lp10"], out=tmp_path / "o", device="cpu",
                             precision="fp32", cache_dir=tmp_path / "cache")
    assert (table.status == "ok").all(), table.error.tolist()
    folder = DATA / "imagenet_folder"
    assert sorted(calls) == sorted([str(folder / "train"), str(folder / "val")] * 2)
    wd = table[table.metric == "weight_decay"].value
    assert set(wd).issubset(set(lp.WD_GRID))


def _folder_from_wds(root: Path, split: str, out: Path) -> None:
    """An image-folder split (<out>/<split>/<class>/<key>.jpg) holding the wds split's JPEG bytes."""
    names = (root / "classnames.txt").read_text().split("\n")
    for shard in sorted((root / split).glob("*.tar")):
        with tarfile.open(shard) as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        for name, data in members.items():
            if name.endswith(".jpg"):
                label = int(members[name[:-4] + ".cls"])
                target = out / split / f"{label:02d}_{names[label].replace(' ', '_')}" / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)


def test_image_folder_layout_with_val_split_and_val_proportion(tmp_path):
    """ImageNet-style folders (train/, val/ and test/ class folders): val_split reads its own split, and
    val_proportion splits the train indices of a non-wds format too."""
    data = tmp_path / "folder"
    _folder_from_wds(WDS, "train", data)
    _folder_from_wds(WDS, "test", data)
    shutil.copytree(data / "train", data / "val")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "fv.yaml").write_text("name: fv\ninclude: imagenet1k_lp\ndataset: folder\nsplit: test\n"
                                   "val_proportion: null\nval_split: val\n")
    (tasks / "fp.yaml").write_text("name: fp\ninclude: imagenet1k_lp\ndataset: folder\nsplit: test\nfewshot_k: 10\n")
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    table = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), [str(tasks / "fv.yaml"), str(tasks / "fp.yaml")],
                             data_root=str(data), out=tmp_path / "o", device="cpu", precision="fp32",
                             cache_dir=tmp_path / "cache")
    assert (table.status == "ok").all(), table.error.tolist()
    v = table.set_index(["task", "metric"]).value
    assert v["fv", "lp_acc1"] > 0.5 and v["fp", "lp_acc1"] > 0.5
    assert (table.n_samples == 400).all()
