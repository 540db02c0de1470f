"""The decode cache built in pieces (issue 13): `evalkit cache build --shard i/n` decodes images
[i*N/n, (i+1)*N/n) into `<entry>/pieces/<i>-of-<n>.npy` atomically; a complete set is assembled once,
under the build lock, into a `pixels.npy` byte-identical to a single build; `submit --cache-first N`
puts an array of N pieces before the evaluation array (afterok)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from _embedded import DATA
from _util import REPO

import evalkit.data.cache as cache
from evalkit.data.open import open_classification
from evalkit.data.preprocess import PreprocessCfg

CFG = PreprocessCfg(size=32)
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> bytes:
    """The bytes of a single-process build of the embedded wds_shapes at 32 px."""
    d = tmp_path_factory.mktemp("single")
    source = open_classification(DATA / "wds_shapes")
    cache.decoded_images(source, CFG, d, num_workers=0)
    return (cache.entry_dir(source, CFG, d) / "pixels.npy").read_bytes()


def test_pieces_built_one_by_one_assemble_to_the_single_build(single, tmp_path):
    source = open_classification(DATA / "wds_shapes")
    entry = cache.entry_dir(source, CFG, tmp_path)
    for i in (2, 0, 1):  # any order; the set is complete only after the last
        assert cache.assemble(source, CFG, tmp_path) is None
        path = cache.build_piece(source, CFG, tmp_path, (i, 3), num_workers=0)
        start, stop = cache.piece_bounds(len(source), i, 3)
        assert path == entry / "pieces" / f"{i}-of-3.npy" and np.load(path).shape == (stop - start, 3, 32, 32)
        assert cache.build_piece(source, CFG, tmp_path, (i, 3), num_workers=0) == path  # complete: skipped
    arr = cache.assemble(source, CFG, tmp_path)
    assert arr is not None and arr.shape == (len(source), 3, 32, 32)
    assert (entry / "pixels.npy").read_bytes() == single
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "pixels.npy"]  # pieces removed, no lock left
    assert cache.build_piece(source, CFG, tmp_path, (0, 3)) is None  # a late piece: the entry is there


def test_decoded_images_assembles_complete_pieces_without_decoding(single, tmp_path, monkeypatch):
    source = open_classification(DATA / "wds_shapes")
    for i in range(2):
        cache.build_piece(source, CFG, tmp_path, (i, 2), num_workers=0)
    decodes = []
    monkeypatch.setattr(cache, "decode_all", lambda *a, **k: decodes.append(1))
    arr = cache.decoded_images(source, CFG, tmp_path, num_workers=0)
    assert decodes == [] and arr.shape == (len(source), 3, 32, 32)
    entry = cache.entry_dir(source, CFG, tmp_path)
    assert (entry / "pixels.npy").read_bytes() == single
    assert "2 pieces" in (entry / "meta.json").read_text()


@pytest.mark.slow  # 3 CLI processes (~25 s); the pieces and their assembly are checked in-process above
def test_three_processes_build_the_pieces_through_the_cli(tmp_path):
    """`evalkit cache build --shard i/3` in 3 concurrent processes (one sharded by RANK/WORLD_SIZE):
    one entry, equal to the single build the engine would make of the same task."""
    cache_dir = tmp_path / "cache"
    cmd = [sys.executable, "-m", "evalkit.cli", "cache", "build", "--tasks", "shapes", "--size", "32",
           "--cache-dir", str(cache_dir)]
    procs = [subprocess.Popen(cmd + ["--shard", f"{i}/3"], env=ENV, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    procs.append(subprocess.Popen(cmd, env={**ENV, "RANK": "2", "WORLD_SIZE": "3"}, cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = "".join(o for o, _ in outs)
    assert said.count("400 images cached") >= 1, said  # the last to finish assembled
    from evalkit.data.roots import resolve_root
    from evalkit.tasks.base import open_task
    from evalkit.tasks.loader import get_task

    spec = get_task("shapes")
    _, source = open_task(spec, resolve_root(spec.dataset, None, spec.options.get("default_root")))
    entry = cache.entry_dir(source, CFG, cache_dir)
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "pixels.npy"]
    want = cache.decoded_images(source, CFG, tmp_path / "single", num_workers=0)
    assert (entry / "pixels.npy").read_bytes() == (cache.entry_dir(source, CFG, tmp_path / "single") / "pixels.npy").read_bytes()
    np.testing.assert_array_equal(np.load(entry / "pixels.npy"), want)


KILLED = r"""
import os, signal, sys
from pathlib import Path
import evalkit.data.cache as cache
from evalkit.data.open import open_classification
from evalkit.data.preprocess import PreprocessCfg

source = open_classification(Path(sys.argv[1]))
real, seen = source.opener, [0]

def open_then_die(i):
    seen[0] += 1
    if seen[0] == 100:  # mid-piece: after the first batches went into the temp file
        os.kill(os.getpid(), signal.SIGKILL)
    return real(i)

source.opener = open_then_die
cache.build_piece(source, PreprocessCfg(size=32), Path(sys.argv[2]), (1, 2), num_workers=0)
"""


def test_a_piece_killed_mid_write_leaves_no_piece(single, tmp_path):
    script = tmp_path / "killed.py"
    script.write_text(KILLED)
    r = subprocess.run([sys.executable, str(script), str(DATA / "wds_shapes"), str(tmp_path)], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    source = open_classification(DATA / "wds_shapes")
    pieces = cache.entry_dir(source, CFG, tmp_path) / "pieces"
    assert not (pieces / "1-of-2.npy").exists()
    assert [p.name for p in pieces.iterdir() if p.name.startswith(".tmp-")]  # only its private temp folder
    assert cache.complete_pieces(pieces.parent, (len(source), 3, 32, 32)) is None
    cache.build_piece(source, CFG, tmp_path, (1, 2), num_workers=0)  # again: cleans the dead temp, completes
    assert sorted(p.name for p in pieces.iterdir()) == ["1-of-2.npy"]
    cache.build_piece(source, CFG, tmp_path, (0, 2), num_workers=0)
    cache.assemble(source, CFG, tmp_path)
    assert (pieces.parent / "pixels.npy").read_bytes() == single


def test_submit_cache_first_puts_the_pieces_before_the_array(tmp_path):
    """sbatch (faked) gets the cache array first, then the evaluation array with afterok on it."""
    run = tmp_path / "logs" / "runA"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("model: tinyclip-S\ntrain_num_samples: 1000\nname: runA\n")
    (run / "checkpoints" / "epoch_1.pt").write_bytes(b"")
    log, fake = tmp_path / "calls", tmp_path / "bin"
    fake.mkdir()
    for name, body in {"srun": "exit 0\n", "scancel": f'echo "scancel $*" >> {log}\n',
                       "sbatch": f'echo "sbatch $*" >> {log}\nfor a; do f="$a"; done\ncat "$f" >> {log}\n'
                                 f'echo "Submitted batch job $((4241 + $(grep -c ^sbatch {log})))"\n'}.items():
        (fake / name).write_text("#!/bin/sh\n" + body)
        (fake / name).chmod(0o755)
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "submit", "--shards", "2", "--run-dir", str(tmp_path / "logs"),
                        "--tasks", "shapes", "--out", str(tmp_path / "out"), "--device", "cpu", "--cache-first", "3",
                        "--cache-dir", str(tmp_path / "cache")],
                       env={**ENV, "PATH": f"{fake}:{os.environ['PATH']}"}, cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 cache pieces (job 4242)" in r.stdout and "(job 4243)" in r.stdout, r.stdout
    scripts = re.split(r"^sbatch .*$", log.read_text(), flags=re.M)[1:]
    assert len(scripts) == 3, log.read_text()
    assert "--job-name=evalkit-cache" in scripts[0] and "--array=0-2%3" in scripts[0]
    assert "--dependency=afterok:4242" in scripts[1] and "--job-name=evalkit" in scripts[1]
    assert "--dependency=afterany:4243" in scripts[2]
