"""The embedded world's caption-selection sets (evalkit/embedded/data/sugar_crepe, winoground), made from its
own test images and captions: their layout, and the built-in tasks on them with `--data-root
'.../{dataset}'` for the micro grid's CLIP, MaMMUT and cap runs: the contrastive numbers equal
clip_benchmark 1.6.2's `image_caption_selection` on the same folder, the suites average their members,
the cap run is read from its params.txt as `cap` (contrastive units not planned), and both captioning
decoders pick an image's own caption well above chance."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import open_clip
import pytest
import torch
from _embedded import DATA, ensure_grid
from PIL import Image

from evalkit.data.formats.selection import SUGAR_CREPE_SUBSETS
from evalkit.embedded.selection_sets import N_SUGAR_CREPE, N_WINOGROUND

SUGAR, WINO = DATA / "sugar_crepe", DATA / "winoground"
RUNS = ("tinyclip-S_s4k", "mammut-tiny-S_s4k", "cap-tiny-S_s4k")


def test_layouts() -> None:
    coco = json.loads((DATA / "mscoco" / "coco_test_karpathy.json").read_text())
    captions: dict[int, set[str]] = {}
    for a in coco["annotations"]:
        captions.setdefault(a["image_id"], set()).add(a["caption"])
    for subset in SUGAR_CREPE_SUBSETS:
        items = json.loads((SUGAR / f"{subset}.json").read_text())
        assert len(items) == N_SUGAR_CREPE
        for it in items.values():
            image_id = int(it["filename"].removesuffix(".jpg"))
            assert (SUGAR / "val2017" / it["filename"]).read_bytes() == (
                DATA / "mscoco" / "val2014" / f"COCO_val2014_{image_id:012d}.jpg").read_bytes()
            assert it["caption"] in captions[image_id] and it["negative_caption"] not in captions[image_id]
    rows = [json.loads(line) for line in (WINO / "examples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == list(range(N_WINOGROUND))
    for r in rows:
        for k in (0, 1):
            png = Image.open(WINO / "images" / f"{r[f'image_{k}']}.png")
            assert png.format == "PNG" and png.mode == "RGB"
        img0 = np.asarray(Image.open(WINO / "images" / f"{r['image_0']}.png"))
        jpg = (DATA / "mscoco" / "val2014" / f"COCO_val2014_{2 * r['id'] + 1:012d}.jpg").read_bytes()
        assert np.array_equal(img0, np.asarray(Image.open(io.BytesIO(jpg)).convert("RGB")))  # lossless copy
        assert r["caption_0"] in captions[2 * r["id"] + 1] and r["caption_1"] in captions[2 * r["id"] + 2]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    from evalkit.engine import RunOptions, run
    from evalkit.grids.zoo import grid_specs
    from evalkit.results.store import collect
    from evalkit.tasks.loader import get_task

    ensure_grid()
    last = {}
    for s in grid_specs("micro"):
        if s.run in RUNS and (s.run not in last or s.epoch > last[s.run].epoch):
            last[s.run] = s
    specs = [last[r] for r in RUNS]
    assert [s.family for s in specs] == [None, None, "cap"]  # cap from params.txt's coca_contrastive_loss_weight: 0
    out = tmp_path_factory.mktemp("sel")
    opts = RunOptions(data_root=str(DATA / "{dataset}"), out=out / "out", device="cpu", cache_dir=out / "cache",
                      num_workers=0, batch_size=16)
    tasks = ["sugar_crepe", "sugar_crepe_generative", "winoground", "winoground_generative"]
    run(specs, [get_task(t) for t in tasks], opts)
    return collect(opts.out)


def _metric(table, run: str, task: str, metric: str = "acc") -> float:
    r = table[(table.run == run) & (table.task == task) & (table.metric == metric)]
    assert list(r.status) == ["ok"], r.error.tolist()
    return float(r.value.iloc[0])


def test_contrastive_equals_clip_benchmark_on_the_world(table) -> None:
    from clip_benchmark.datasets.builder import image_captions_collate_fn
    from clip_benchmark.datasets.sugar_crepe import SugarCrepe
    from clip_benchmark.metrics import image_caption_selection as cb

    from evalkit.embedded.grid import get_run, model_config_path
    from evalkit.models.checkpoint import read_state_dict

    spec = get_run("tinyclip-S_s4k")
    open_clip.add_model_config(model_config_path(spec.model))
    model, _, preprocess = open_clip.create_model_and_transforms(spec.model)
    model.load_state_dict(read_state_dict(spec.checkpoint(spec.epochs)))
    tokenizer = open_clip.get_tokenizer(spec.model)
    for subset in SUGAR_CREPE_SUBSETS:
        ds = SugarCrepe(str(SUGAR / "val2017"), str(SUGAR / f"{subset}.json"), transform=preprocess)
        loader = torch.utils.data.DataLoader(ds, batch_size=8,
                                             collate_fn=image_captions_collate_fn)
        theirs = cb.evaluate(model.eval(), loader, tokenizer, "cpu", amp=False)
        for m in ("image_acc", "text_acc", "acc"):
            assert math.isclose(_metric(table, spec.name, f"sugar_crepe/{subset}", m), theirs[m], abs_tol=1e-6), (subset, m)


def test_suites_cap_and_decoders_above_chance(table) -> None:
    for run, suites in (("tinyclip-S_s4k", ["sugar_crepe"]), ("mammut-tiny-S_s4k", ["sugar_crepe", "sugar_crepe_generative"]),
                        ("cap-tiny-S_s4k", ["sugar_crepe_generative"])):
        for suite in suites:
            suffix = "_generative" if suite.endswith("_generative") else ""
            members = [_metric(table, run, f"sugar_crepe/{s}{suffix}") for s in SUGAR_CREPE_SUBSETS]
            assert math.isclose(_metric(table, run, suite, "average"), sum(members) / 7, abs_tol=1e-12)
    cap = table[table.run == "cap-tiny-S_s4k"]
    assert set(cap.task) == {"sugar_crepe_generative", "winoground_generative",
                             *(f"sugar_crepe/{s}_generative" for s in SUGAR_CREPE_SUBSETS)}  # contrastive: not planned
    assert set(cap.eval_type) == {"log_likelihood"} and set(cap.family) == {"cap"}
    clip_gen = table[(table.run == "tinyclip-S_s4k") & (table.task == "winoground_generative")]
    assert list(clip_gen.status) == ["failed"] and clip_gen.error.iloc[0].startswith("NoCaptioner: ")
    # an image's own caption against another image's: chance is 0.5 (SugarCrepe's acc)
    for run in ("mammut-tiny-S_s4k", "cap-tiny-S_s4k"):
        assert _metric(table, run, "sugar_crepe_generative", "average") > 0.7, run
    assert _metric(table, "tinyclip-S_s4k", "sugar_crepe", "average") > 0.7
