"""The task registry: every `*.yaml` under the task folders, plus ad-hoc `wds/NAME` tasks."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

from evalkit.tasks.spec import TaskError, TaskSpec

REQUIRED = ("name", "type", "dataset")


def task_dirs() -> list[Path]:
    """`$EVALKIT_TASKS` (os.pathsep-separated) first, then the repository's top-level `tasks/` in a
    source checkout or editable install, else the copy an installed wheel ships (setup.py)."""
    dirs = [Path(p) for p in os.environ.get("EVALKIT_TASKS", "").split(os.pathsep) if p]
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file() and (root / "tasks").is_dir():
        dirs.append(root / "tasks")
    else:
        from importlib.resources import files

        dirs.append(Path(str(files("evalkit").joinpath("_registry", "tasks"))))
    return [d for d in dirs if d.is_dir()]


def read_task_file(path: Path) -> TaskSpec:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({e}).") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file must be a mapping with keys {', '.join(REQUIRED)}.")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise TaskError(f"{path}: missing keys {', '.join(missing)}.")
    known = set(TaskSpec.__dataclass_fields__) - {"source", "options"}
    options = {k: v for k, v in data.items() if k not in known}
    return TaskSpec(**{k: v for k, v in data.items() if k in known}, options=options, source=str(path))


def all_tasks() -> dict[str, TaskSpec]:
    tasks: dict[str, TaskSpec] = {}
    for d in reversed(task_dirs()):  # earlier dirs override later ones
        for f in sorted(d.glob("*.yaml")):
            spec = read_task_file(f)
            tasks[spec.name] = spec
    return tasks


def wds_task(name: str) -> TaskSpec:
    """`wds/NAME`: any clip_benchmark webdataset folder, typed by its `dataset_type.txt`."""
    dataset = name.split("/", 1)[1]
    return TaskSpec(
        name=name, type="wds_auto", dataset=dataset, split="test",
        classnames="dataset", templates="dataset", source="wds",
    )


def get_task(name: str) -> TaskSpec:
    """A registered task, `wds/NAME`, or `NAME@PROTOCOL` (a task file's `protocol:` chosen on the
    command line, e.g. `ade20k@zero-shot`; the name and hash say which one ran)."""
    if name.startswith("wds/"):
        return wds_task(name)
    if "@" in name:
        from dataclasses import replace

        base, protocol = name.split("@", 1)
        spec = get_task(base)
        if "protocol" not in spec.options:
            raise TaskError(f"task {base} ({spec.source}) declares no `protocol:` to choose; use plain '{base}'.")
        return replace(spec, name=name, options={**spec.options, "protocol": protocol})
    tasks = all_tasks()
    if name in tasks:
        return tasks[name]
    close = difflib.get_close_matches(name, list(tasks), n=5, cutoff=0.4)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise TaskError(f"Unknown task '{name}'.{hint} `evalkit tasks` lists them; `wds/NAME` reads a clip_benchmark wds folder.")
