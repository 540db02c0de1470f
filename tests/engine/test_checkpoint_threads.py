"""Checkpoint reads from several threads at once (the prefetch thread loads the next checkpoint while
the main thread reads another): torch's allowlist for `weights_only` loads is one process-wide set,
so one load finishing must not take the allowlist away from another still running (issue 15, item 4).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from _util import save_training_checkpoint, tiny_clip

from evalkit.models import checkpoint
from evalkit.models.checkpoint import CheckpointError, read_state_dict, read_training_metadata


@pytest.fixture(scope="module")
def training_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], list[Path]]:
    model = tiny_clip()
    folder = tmp_path_factory.mktemp("ckpts")
    paths = [save_training_checkpoint(model, folder / f"epoch_{i}.pt", epoch=i) for i in range(1, 4)]
    return model.state_dict(), paths


def _ours_registered() -> bool:
    return any(g in torch.serialization.get_safe_globals() for g in checkpoint._numpy_allowlist())


def test_concurrent_training_checkpoint_reads_all_succeed(training_files) -> None:
    """6 threads x 15 reads of training checkpoints holding numpy scalars: none is refused."""
    want, paths = training_files
    assert not _ours_registered()
    n_threads, n_loads = 6, 15
    start = threading.Barrier(n_threads)

    def worker(t: int) -> list[str]:
        start.wait()
        errors = []
        for i in range(n_loads):
            path = paths[(t + i) % len(paths)]
            try:
                state = read_state_dict(path) if i % 3 else {**read_training_metadata(path), **read_state_dict(path)}
                assert set(want) <= set(state)
            except CheckpointError as e:
                errors.append(str(e))
        return errors

    with ThreadPoolExecutor(n_threads) as pool:
        errors = [e for errs in pool.map(worker, range(n_threads)) for e in errs]
    assert not errors, f"{len(errors)} of {n_threads * n_loads} loads failed, e.g. {errors[0]}"
    # The allowlist is only there while an evalkit load runs: afterwards torch.load is as strict as before.
    assert not _ours_registered()


def test_load_finishing_first_keeps_the_allowlist_for_the_other(training_files, monkeypatch) -> None:
    """The exact interleaving of the bug, made deterministic: a slow load is inside its allowlist window
    while a second load starts and finishes; the slow one must still read its numpy scalars."""
    want, paths = training_files
    real_load = torch.load
    inside, release = threading.Event(), threading.Event()

    def load(*args, **kwargs):
        if threading.current_thread().name == "slow":
            inside.set()
            assert release.wait(30)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    result: dict[str, object] = {}

    def slow() -> None:
        try:
            result["state"] = read_state_dict(paths[0])
        except CheckpointError as e:
            result["error"] = e

    t = threading.Thread(target=slow, name="slow")
    t.start()
    try:
        assert inside.wait(30)
        read_state_dict(paths[1])  # starts after the slow one and finishes before it
    finally:
        release.set()
        t.join(30)
    assert "error" not in result, result.get("error")
    state = result["state"]
    assert set(state) == set(want)  # the slow load read the whole state dict, values intact
    for k, v in want.items():
        torch.testing.assert_close(state[k], v, rtol=0, atol=0)
    assert not _ours_registered()


def test_user_registration_is_left_alone(training_files) -> None:
    """A global the caller registered before is neither duplicated nor removed by evalkit's loads."""
    _, paths = training_files
    mine = np.dtype
    before = torch.serialization.get_safe_globals()
    assert mine not in before
    torch.serialization.add_safe_globals([mine])
    try:
        read_state_dict(paths[0])
        assert mine in torch.serialization.get_safe_globals()
    finally:
        torch.serialization.clear_safe_globals()
        torch.serialization.add_safe_globals(before)


def test_other_torch_load_callers_stay_strict(training_files) -> None:
    """Between evalkit loads the allowlist is not widened: open_clip's own loader still refuses the file."""
    import pickle

    _, paths = training_files
    read_state_dict(paths[0])
    with pytest.raises(pickle.UnpicklingError):
        open_clip.load_checkpoint(tiny_clip(), str(paths[0]))
