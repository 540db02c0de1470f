"""`--limit N` in the task layer: the first N samples of the split, a task of its own (hash, fingerprint),
while a task without a limit keeps the hash it always had."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from evalkit.data.roots import resolve_root
from evalkit.tasks.base import open_task
from evalkit.tasks.loader import get_task


def _open(spec):
    return open_task(spec, resolve_root(spec.dataset, None, spec.options.get("default_root")))


@pytest.mark.parametrize("name", ["shapes", "shapes_coco"])
def test_first_samples_are_the_reader_order_prefix(name: str) -> None:
    base = get_task(name)
    full_spec, full = _open(base)
    cut_spec, cut = _open(replace(base, limit=30))
    assert len(cut) == 30 and cut.ids == full.ids[:30] and list(cut.targets) == list(full.targets[:30])
    assert [cut.open(i).tobytes() for i in (0, 29)] == [full.open(i).tobytes() for i in (0, 29)]
    assert cut.fingerprint != full.fingerprint  # never the whole split's decode-cache entry
    assert cut_spec.limit == 30 and cut_spec.data["n_images"] == 30 and cut_spec.hash != full_spec.hash
    # deterministic: opened again, the same task
    again_spec, again = _open(replace(base, limit=30))
    assert again_spec.hash == cut_spec.hash and again.ids == cut.ids


def test_no_limit_keeps_the_old_hash() -> None:
    spec, _ = _open(get_task("shapes"))
    cfg = spec.config()
    assert "limit" not in cfg
    # the hash rule as it was before `limit` existed: sha1 of the config's sorted JSON
    assert spec.hash == hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:12]
    limited = replace(spec, limit=5)
    assert limited.config()["limit"] == 5 and limited.hash != spec.hash


def test_limit_past_the_split_is_the_whole_split() -> None:
    full_spec, full = _open(get_task("shapes"))
    spec, src = _open(replace(get_task("shapes"), limit=10 ** 6))
    assert len(src) == len(full) and src.fingerprint == full.fingerprint and spec.hash != full_spec.hash
