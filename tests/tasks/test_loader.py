"""The task loader reads each task file's YAML once per content, however many suites name it."""

from __future__ import annotations

import pytest
import yaml

from evalkit.tasks import loader


def _write_grid(tmp_path, n: int) -> None:
    for i in range(n):
        (tmp_path / f"t{i}.yaml").write_text(
            f"name: t{i}\ntype: zeroshot_classification\ndataset: d{i}\nclassnames: [a, b]\ntemplates: ['{{c}}']\n")
    (tmp_path / "s.yaml").write_text("name: s\ntype: suite\ntasks: [" + ", ".join(f"t{i}" for i in range(n)) + "]\n")


def test_a_suite_parses_each_file_once_and_sees_an_edit(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_TASKS", str(tmp_path))
    monkeypatch.setattr(loader, "_PARSED", {})
    _write_grid(tmp_path, 6)
    parsed: list[str] = []
    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parsed.append(text.split("\n", 1)[0]) or real(text))

    tasks, suites = loader.expand(["s"])
    assert [t.name for t in tasks] == [f"t{i}" for i in range(6)] and [s.name for s in suites] == ["s"]
    ours = [p for p in parsed if p in {f"name: t{i}" for i in range(6)} | {"name: s"}]
    assert sorted(ours) == sorted({*ours}) and len(ours) == 7  # 7 files of ours, each parsed once

    # the same size, written at once: the content decides, not the clock
    (tmp_path / "t3.yaml").write_text((tmp_path / "t3.yaml").read_text().replace("dataset: d3", "dataset: e3"))
    assert loader.get_task("t3").dataset == "e3"
    # the cached mapping is copied: the loader's pops of `include:` never reach the cache
    assert loader.get_task("t3").dataset == "e3" and loader.get_task("t2").dataset == "d2"


def test_a_broken_file_is_reported_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("EVALKIT_TASKS", str(tmp_path))
    (tmp_path / "bad.yaml").write_bytes(b"name: bad\ntype: [unclosed\n")
    for _ in range(2):  # an error is never cached as a parsed file
        with pytest.raises(loader.TaskError, match=r"bad\.yaml: not valid YAML"):
            loader.all_tasks()
    (tmp_path / "bad.yaml").write_bytes(b"name: bad\ntype: zeroshot_classification\n\xff\n")
    with pytest.raises(loader.TaskError, match=r"bad\.yaml: not a UTF-8 text file"):
        loader.all_tasks()
