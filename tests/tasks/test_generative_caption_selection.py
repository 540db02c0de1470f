"""`generative_image_caption_selection` equals the clip_benchmark branch's rule (tests/oracles/
branch_caption_selection.py, a copy of `log_likelihood_eval`'s loop) per instance, on the embedded
world's trained tiny MaMMUT: score matrices to 1e-4, verdicts and metrics exact, normalisation off and
on, SugarCrepe and Winoground. The tie and NaN rule by hand on constructed matrices; a CLIP on the
generative task is one failed unit naming its family."""

from __future__ import annotations

import datasets
import pandas as pd
import pytest
import torch
from _caption_sets import make_sugar_crepe, make_winoground_hf, winoground_dataset
from _embedded import trained_checkpoint
from clip_benchmark.datasets.builder import image_captions_collate_fn
from clip_benchmark.datasets.sugar_crepe import SugarCrepe
from open_clip.transform import PreprocessCfg as OCPreprocess
from open_clip.transform import image_transform_v2
from oracles import branch_caption_selection as branch

import evalkit
from evalkit.models.factory import load_model
from evalkit.models.spec import ModelSpec
from evalkit.tasks.protocols.generative_image_caption_selection import tie_correct

N_SUGAR, N_WINO = 8, 6


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gsel")
    ckpt, cfg = trained_checkpoint("mammut-tiny-S_s4k")
    lm = load_model(ModelSpec(model=str(cfg), pretrained=str(ckpt)), device="cpu")
    p = lm.preprocess
    transform = image_transform_v2(OCPreprocess(size=p.size, mean=p.mean, std=p.std, interpolation=p.interpolation,
                                                resize_mode=p.resize_mode), is_train=False)
    return {"ckpt": ckpt, "cfg": cfg, "lm": lm, "transform": transform,
            "sugar": make_sugar_crepe(root / "sugar_crepe", n=N_SUGAR, subsets=("replace_rel",)),
            "wino": make_winoground_hf(root / "winoground", n=N_WINO)}


def _evalkit(world, task: str, root, out, **opts) -> tuple[dict[str, float], pd.DataFrame]:
    if opts:  # a user's variant: one task file including the built-in one
        path = out.parent / f"{out.name}.yaml"
        path.write_text(f"name: {task}_variant\ninclude: {task}\n" + "".join(f"{k}: {v}\n" for k, v in opts.items()))
        task = str(path)
    table = evalkit.evaluate(ModelSpec(model=str(world["cfg"]), pretrained=str(world["ckpt"])), [task],
                             data_root=str(root), out=out, device="cpu", precision="fp32", log_samples=True,
                             cache_dir=None, num_workers=0, batch_size=3)
    assert (table.status == "ok").all(), table.error.tolist()
    samples = pd.read_parquet(next((out / "samples").glob("*.parquet")))
    return dict(zip(table.metric, table.value, strict=True)), samples


def _check(ours, theirs) -> None:
    metrics, samples = ours
    ref_metrics, rows = theirs
    assert metrics == pytest.approx(ref_metrics, abs=0) and len(samples) == len(rows)
    for k, row in samples.iterrows():
        ref = rows[k]
        # float32 sums of ~100 nats (a log-softmax over 49,408 tokens per position): 2e-6 relative to the raw
        # log-likelihood, which normalisation's difference keeps as an absolute error
        torch.testing.assert_close(torch.tensor(list(row.scores), dtype=torch.float32).view_as(ref["scores"]),
                                   ref["scores"], atol=3e-4, rtol=0)
        assert (bool(row.text_correct), bool(row.image_correct), bool(row.correct)) == (
            ref["text_correct"], ref["image_correct"], ref["correct"]), k


def _oracle(world, dataset, **kw):
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=0, collate_fn=image_captions_collate_fn)
    return branch.evaluate(branch.ForkMaMMUT(world["lm"].model), loader, world["lm"].tokenizer, **kw)


@pytest.mark.parametrize("normalize", [False, True])
def test_equals_the_branch_per_instance(world, tmp_path, monkeypatch, normalize):
    opts = {"normalize": "true", "normalize_coef": 0.5} if normalize else {}
    kw = {"normalize": True, "normalize_coef": 0.5} if normalize else {}

    sugar = SugarCrepe(str(world["sugar"] / "val2017"), str(world["sugar"] / "replace_rel.json"), transform=world["transform"])
    ours = _evalkit(world, "sugar_crepe/replace_rel_generative", world["sugar"], tmp_path / "s", **opts)
    _check(ours, _oracle(world, sugar, **kw))
    verdicts = list(ours[1].text_correct)

    from clip_benchmark.datasets import winoground

    monkeypatch.setattr(datasets, "load_dataset", lambda name, cache_dir=None: {"test": winoground_dataset(N_WINO)})
    wino = winoground.WinoGround(root=str(tmp_path), transform=world["transform"])
    ours = _evalkit(world, "winoground_generative", world["wino"], tmp_path / "w", **opts)
    theirs = _oracle(world, wino, **kw)
    _check(ours, theirs)
    verdicts += [*ours[1].text_correct, *ours[1].image_correct]
    assert 0 < sum(map(bool, verdicts)) < len(verdicts)  # verdicts go both ways: the match means something
    if normalize:  # the prior moved every score (and so the test of it means something)
        raw = _oracle(world, wino)[1]
        assert all((r["scores"] - t["scores"]).abs().min() > 0.1 for r, t in zip(raw, theirs[1], strict=True))


def test_tie_and_nan_rule_by_hand():
    nan = float("nan")
    cases = [  # [I, C] scores -> (text_correct, image_correct), reasoned by hand
        ([[-1.0, -2.0], [-3.0, -0.5]], (True, True)),    # both diagonals win
        ([[-1.0, -1.0], [-3.0, -0.5]], (False, True)),   # image 0 scores both captions alike: a tie counts wrong
        ([[-1.0, -2.0], [-1.0, -0.5]], (True, False)),   # caption 0 scores both images alike
        ([[-1.0, -2.0], [-3.0, nan]], (False, False)),    # a NaN anywhere: both wrong
        ([[-2.0, -1.0], [-3.0, -0.5]], (False, True)),   # image 0 prefers caption 1
        ([[-5.0, -5.0]], (False, True)),                 # SugarCrepe shape (1 image): a tie is wrong, the column is trivially right
        ([[-1.0, -1.0, -2.0]], (True, True)),            # a partial tie (3 captions): argmax takes the first
    ]
    for scores, want in cases:
        s = torch.tensor(scores)
        got = tie_correct(s[None])
        assert (bool(got[0]), bool(got[1])) == want, scores
        assert branch.judge(s.clone(), min(s.shape)) == want, scores  # the branch's own rule agrees


def test_a_model_without_decoder_is_one_failed_unit(world, tmp_path):
    ckpt, cfg = trained_checkpoint("tinyclip-S_s2k")
    table = evalkit.evaluate(ModelSpec(model=str(cfg), pretrained=str(ckpt)), ["winoground_generative", "winoground"],
                             data_root=str(world["wino"]), out=tmp_path / "o", device="cpu", cache_dir=None, num_workers=0)
    gen = table[table.task == "winoground_generative"]
    assert list(gen.status) == ["failed"] and "has no captioning decoder" in gen.error.iloc[0]
    assert "family clip" in gen.error.iloc[0] and "image_caption_selection" in gen.error.iloc[0]
    assert (table[table.task == "winoground"].status == "ok").all()  # the contrastive task on the same data runs
