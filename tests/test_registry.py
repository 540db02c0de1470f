"""Task files v2: typed options (unknown keys and wrong types refused up front), `metrics:` selection,
`include:` variants, and suites with their average rows; the built-in suites run end to end over the
embedded world's wds folders laid out under the real dataset names."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
import pytest
from _embedded import DATA, trained_checkpoint

from evalkit.cli import main
from evalkit.engine import RunOptions, run
from evalkit.models.spec import ModelSpec
from evalkit.results.store import collect
from evalkit.tasks.loader import all_tasks, expand, get_task, suite_members
from evalkit.tasks.spec import TaskError


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    d = tmp_path / "tasks"
    d.mkdir()
    monkeypatch.setenv("EVALKIT_TASKS", str(d))
    return d


def write(d, name, text):
    (d / f"{name}.yaml").write_text(textwrap.dedent(text).lstrip())
    return d / f"{name}.yaml"


@pytest.fixture(scope="module")
def ckpt():
    path, config = trained_checkpoint("tinyclip-S_s2k")
    return ModelSpec(model=str(config), pretrained=str(path), name="tinyclip-S")


def _run(ckpt, tasks, out, root):
    counts = run([ckpt], [get_task(t) for t in tasks],
                 RunOptions(out=out, data_root=str(root), device="cpu", cache_dir=out.parent / "cache"))
    return counts, collect(out)


# ------------------------------------------------------------------------------ task files


def test_include_makes_a_three_line_variant(task_dir):
    write(task_dir, "shapes_top1", """
        include: shapes
        name: shapes_top1
        metrics: [acc1]
    """)
    base, variant = get_task("shapes"), get_task("shapes_top1")
    assert variant.dataset == base.dataset and variant.templates == base.templates
    assert variant.metrics == ["acc1"] and variant.main_metric == "acc1" and variant.hash != base.hash


def test_include_by_path_and_nested_settings_merge(task_dir):
    write(task_dir, "seg_short", """
        include: shapes_ade20k
        name: seg_short
        linear: {steps: 10}
    """)
    write(task_dir, "seg_shorter", """
        include: ./seg_short.yaml
        name: seg_shorter
        linear: {seed: 3}
    """)
    base, spec = get_task("shapes_ade20k"), get_task("seg_shorter")
    assert spec.options["linear"] == {**base.options["linear"], "steps": 10, "seed": 3}


def test_include_cycle_refused(task_dir):
    write(task_dir, "a", "include: b\nname: a\n")
    write(task_dir, "b", "include: a\nname: b\n")
    with pytest.raises(TaskError, match="include cycle"):
        all_tasks()


def test_unknown_key_refused_naming_file_key_and_allowed(task_dir):
    path = write(task_dir, "typo", """
        name: typo
        type: zeroshot_classification
        dataset: shapes
        clasnames: dataset
        templates: ["a {c}"]
    """)
    with pytest.raises(TaskError) as e:
        get_task("shapes")  # any lookup validates every file
    msg = str(e.value)
    assert str(path) in msg and "'clasnames'" in msg and "Did you mean 'classnames'" in msg and "Allowed keys" in msg


def test_wrong_type_refused(task_dir):
    path = write(task_dir, "badtype", """
        name: badtype
        type: segmentation
        dataset: shapes_ade20k
        num_classes: nine
    """)
    with pytest.raises(TaskError, match=rf"{path}: key 'num_classes' must be int"):
        all_tasks()


def test_bad_task_file_stops_before_any_work(task_dir, tmp_path, capsys):
    write(task_dir, "typo", "name: typo\ntype: zeroshot_classification\ndataset: shapes\nsplitt: val\n")
    out = tmp_path / "out"
    rc = main(["run", "--model", "tinyclip-S", "--tasks", "shapes", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 2 and "'splitt'" in err and "typo.yaml" in err
    assert not out.exists()


def test_metrics_select_and_main_metric_checked(task_dir, ckpt, tmp_path):
    write(task_dir, "shapes_top1", "include: shapes\nname: shapes_top1\nmetrics: [acc1, acc5]\n")
    _, table = _run(ckpt, ["shapes_top1"], tmp_path / "out", DATA / "imagenet_folder")
    assert sorted(table.metric) == ["acc1", "acc5"]
    write(task_dir, "bad_main", "include: shapes\nname: bad_main\nmetrics: [acc5]\nmain_metric: acc1\n")
    with pytest.raises(TaskError, match="main_metric 'acc1' is not one of"):
        all_tasks()
    (task_dir / "bad_main.yaml").unlink()
    write(task_dir, "bad_metric", "include: shapes\nname: bad_metric\nmetrics: [top1]\n")
    with pytest.raises(TaskError, match="top1 are not computed by zeroshot_classification"):
        all_tasks()


# ------------------------------------------------------------------------------ suites


def test_suite_average_row(task_dir, ckpt, tmp_path):
    write(task_dir, "mini", """
        name: mini
        type: suite
        tasks: [shapes, {task: wds/wds_shapes, main_metric: mean_per_class_recall}, shapes_coco]
    """)
    out = tmp_path / "out"
    root = DATA / "{dataset}"
    counts, table = _run(ckpt, ["mini"], out, root)
    assert counts == {"ok": 4, "failed": 0, "skipped": 0}
    v = table.set_index(["task", "metric"]).value
    expected = (v["shapes", "acc1"] + v["wds/wds_shapes", "mean_per_class_recall"] + v["shapes_coco", "mean_recall@1"]) / 3
    row = table[table.task == "mini"]
    assert len(row) == 1 and row.metric.iloc[0] == "average" and row.n_samples.iloc[0] == 3
    assert row.value.iloc[0] == pytest.approx(expected, abs=1e-12) and row.status.iloc[0] == "ok"
    # a rerun has nothing to do, the suite row included
    counts, again = _run(ckpt, ["mini"], out, root)
    assert counts == {"ok": 0, "failed": 0, "skipped": 4}
    pd.testing.assert_frame_equal(table.drop(columns="finished_at"), again.drop(columns="finished_at"))


def test_suite_of_suites_and_failed_member(task_dir, ckpt, tmp_path):
    write(task_dir, "inner", "name: inner\ntype: suite\ntasks: [shapes, wds/wds_shapes]\n")
    write(task_dir, "outer", "name: outer\ntype: suite\ntasks: [inner, shapes_coco]\n")
    write(task_dir, "broken", "name: broken\ntype: suite\ntasks: [shapes, wds/wds_missing]\n")
    tasks, suites = expand(["outer"])
    assert [t.name for t in tasks] == ["shapes", "wds/wds_shapes", "shapes_coco"]
    assert [s.name for s in suites] == ["inner", "outer"]
    _, table = _run(ckpt, ["outer", "broken"], tmp_path / "out", DATA / "{dataset}")
    v = table.set_index(["task", "metric"]).value
    assert v["inner", "average"] == pytest.approx((v["shapes", "acc1"] + v["wds/wds_shapes", "acc1"]) / 2)
    assert v["outer", "average"] == pytest.approx((v["inner", "average"] + v["shapes_coco", "mean_recall@1"]) / 2)
    bad = table[table.task == "broken"].iloc[0]
    assert bad.status == "failed" and "wds/wds_missing (failed)" in bad.error and pd.isna(bad.value)


def test_suite_cycle_refused(task_dir):
    write(task_dir, "s1", "name: s1\ntype: suite\ntasks: [s2]\n")
    write(task_dir, "s2", "name: s2\ntype: suite\ntasks: [s1]\n")
    with pytest.raises(TaskError, match="contains itself"):
        expand(["s1"])


# ------------------------------------------------------------------------------ built-in suites


def _lay_out(root, tmp_path, only=("datacomp", "imagenet_distribution_shift")):
    """The embedded wds folders copied under every member's real clip_benchmark name."""
    names = {}
    for suite in only:
        tasks, _ = expand([suite])
        for t in tasks:
            names[t.dataset] = t
    for dataset in names:
        retrieval = dataset in ("wds_flickr30k", "wds_mscoco_captions")
        shutil.copytree(DATA / ("wds_shapes_captions" if retrieval else "wds_shapes"), root / dataset,
                        copy_function=shutil.copy2)
    classes = (DATA / "wds_shapes" / "classnames.txt").read_text().splitlines()
    for dataset, n in (("wds_imagenetv2", 1000), ("wds_imagenet_sketch", 1000), ("wds_imagenet-a", 200),
                       ("wds_imagenet-r", 200), ("wds_objectnet", 113)):
        if dataset not in names:
            continue
        # the real folders' class counts; the embedded images keep labels 0..9
        (root / dataset / "classnames.txt").write_text("\n".join(classes + [f"class {i}" for i in range(10, n)]) + "\n")
    return names


def test_builtin_suites_expand_to_datacomps_tasklist():
    dc = suite_members(get_task("datacomp_classification"))
    members = dc.options["tasks"]
    assert len(members) == 31 and len(dc.options["partial"]) == 4 and len(members) + 4 == 35  # the paper's 35
    per_class = {m["task"] for m in members if m.get("main_metric") == "mean_per_class_recall"}
    assert per_class == {"wds/wds_vtab-caltech101", "wds/wds_fgvc_aircraft", "wds/wds_vtab-flowers", "wds/wds_vtab-pets"}
    full = suite_members(get_task("datacomp"))
    assert len(full.options["tasks"]) == 33 and len(full.options["partial"]) == 5  # 38 = DataComp's average
    tasks, suites = expand(["datacomp", "imagenet_distribution_shift"])
    assert [s.name for s in suites] == ["datacomp", "imagenet_distribution_shift"] and len(tasks) == 38


def test_imagenet_distribution_shift_end_to_end(ckpt, tmp_path):
    root = tmp_path / "data"
    _lay_out(root, tmp_path, only=("imagenet_distribution_shift",))
    counts, table = _run(ckpt, ["imagenet_distribution_shift"], tmp_path / "out", root / "{dataset}")
    assert counts == {"ok": 6, "failed": 0, "skipped": 0}
    v = table.set_index(["task", "metric"]).value
    shift = ["imagenetv2", "imagenet_sketch", "imagenet-a", "imagenet-r", "objectnet"]
    assert v["imagenet_distribution_shift", "average"] == pytest.approx(sum(v[t, "acc1"] for t in shift) / 5)
    # the same images under class lists of 113, 200 and 1000 names: more classes never score higher
    assert v["objectnet", "acc1"] >= v["imagenet-a", "acc1"] >= v["imagenetv2", "acc1"]
    assert v["imagenetv2", "acc1"] == v["imagenet_sketch", "acc1"]  # same data, same (shared) classifier


@pytest.mark.slow
def test_builtin_suites_end_to_end(ckpt, tmp_path):
    root = tmp_path / "data"
    names = _lay_out(root, tmp_path)
    assert len(names) == 33  # the distribution-shift task files read the same folders as DataComp's members
    out = tmp_path / "out"
    counts, table = _run(ckpt, ["datacomp_classification", "datacomp", "imagenet_distribution_shift"], out,
                         root / "{dataset}")
    assert counts["failed"] == 0
    avg = table[table.metric == "average"].set_index("task")
    assert set(avg.index) == {"datacomp_classification", "datacomp", "imagenet_distribution_shift"}
    v = table[table.metric != "average"].set_index(["task", "metric"]).value
    members = suite_members(get_task("datacomp_classification")).options["tasks"]
    want = sum(v[m["task"], m.get("main_metric", "acc1")] for m in members) / 31
    assert avg.value["datacomp_classification"] == pytest.approx(want)
    assert avg.n_samples["datacomp"] == 33 and "partial: 5" in avg.error["datacomp"]
    assert "partial: 4" in avg.error["datacomp_classification"]


def test_imagenet_subset_from_folder_wnids(tmp_path):
    """ImageNet-A/-R in the folder layout: the wnid folders are named with ImageNet-1k's class names."""
    from evalkit.tasks.base import open_task
    from evalkit.tasks.protocols.zeroshot_classification import imagenet1k_wnids
    from evalkit.tasks.spec import open_clip_list

    wnids = imagenet1k_wnids()
    pick = [wnids[i] for i in (1, 7, 300)]
    src = sorted((DATA / "imagenet_folder" / "val").glob("*/*"))[:3]
    for w, img in zip(pick, src):
        (tmp_path / "test" / w).mkdir(parents=True)
        shutil.copy(img, tmp_path / "test" / w / img.name)
    spec, _ = open_task(get_task("imagenet-a"), tmp_path)
    names = open_clip_list("IMAGENET_CLASSNAMES")
    assert spec.classnames == [names[1], names[7], names[300]]
