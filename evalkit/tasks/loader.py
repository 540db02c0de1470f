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


COMMON_KEYS = {
    "name": str, "type": str, "dataset": str, "split": str, "classnames": (list, str), "templates": (list, str),
    "metrics": list, "main_metric": str, "default_root": str, "description": str, "include": str,
}
SUITE_KEYS = {"name": str, "type": str, "tasks": list, "partial": list, "members_of": list, "description": str,
              "include": str}


# parsed task files by (path, content): `get_task` validates every file, so a suite of suites would
# otherwise parse each YAML file once per member; reading the bytes is cheap, parsing is not, and an
# edited file (even within one mtime tick) has another key
_PARSED: dict[tuple[str, bytes], dict] = {}


def _load_yaml(path: Path) -> dict:
    """A task file's mapping (a fresh copy: callers pop and merge keys)."""
    import copy
    import hashlib

    try:
        text = path.read_bytes()
    except OSError as e:
        raise TaskError(f"{path}: cannot read the task file ({e.strerror or e}).") from None
    key = (str(path), hashlib.sha1(text).digest())
    if key not in _PARSED:
        if len(_PARSED) > 4096:
            _PARSED.clear()
        _PARSED[key] = _parse_yaml(path, text)
    return copy.deepcopy(_PARSED[key])


def _parse_yaml(path: Path, text: bytes) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text.decode())
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML ({e}).") from None
    except UnicodeDecodeError as e:
        raise TaskError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start}).") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: a task file must be a mapping with keys {', '.join(REQUIRED)}.")
    return data


def _merge(base: dict, own: dict) -> dict:
    """`own` over `base`; mappings (a protocol's settings block) merge key by key."""
    out = dict(base)
    for k, v in own.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _raw(path: Path, chain: tuple[str, ...] = (), files: dict[str, Path] | None = None) -> dict:
    """A task file's keys with its `include:` chain applied (base first, the file's own keys last)."""
    data = _load_yaml(path)
    inc = data.pop("include", None)
    if inc is None:
        return data
    if not isinstance(inc, str):
        raise TaskError(f"{path}: include must be a task name or a path relative to this file, not {inc!r}.")
    target = (path.parent / inc) if inc.endswith((".yaml", ".yml")) else (files or {}).get(inc)
    if target is None or not target.is_file():
        known = ", ".join(sorted(files or {}))
        raise TaskError(f"{path}: include: {inc!r} is neither a registered task ({known}) nor a file beside it.")
    key = str(target.resolve())
    if key in chain or str(path.resolve()) == key:
        cycle = " -> ".join([*(Path(c).name for c in chain), path.name, target.name])
        raise TaskError(f"{path}: include cycle ({cycle}).")
    if "name" not in data:
        raise TaskError(f"{path}: a file that includes another needs its own name:.")
    return _merge(_raw(target, (*chain, str(path.resolve())), files), data)


def _type_ok(value: object, want: object) -> bool:
    if value is None:
        return True
    kinds = want if isinstance(want, tuple) else (want,)
    if float in kinds and isinstance(value, int) and not isinstance(value, bool):
        return True
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def _check_keys(path: Path, data: dict, allowed: dict[str, object], what: str) -> None:
    for key, value in data.items():
        if key not in allowed:
            close = difflib.get_close_matches(key, list(allowed), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise TaskError(f"{path}: unknown key '{key}' for {what}.{hint} Allowed keys: {', '.join(sorted(allowed))}.")
        if not _type_ok(value, allowed[key]):
            want = allowed[key]
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))  # type: ignore[union-attr]
            raise TaskError(f"{path}: key '{key}' must be {names}, not {type(value).__name__} ({value!r:.60}).")


def _option_fields(proto: type) -> dict[str, tuple[object, object]]:
    """name -> (type, default or MISSING) of a protocol's declared options."""
    import dataclasses
    import typing

    opts = getattr(proto, "Options", None)
    if opts is None:
        return {}
    hints = typing.get_type_hints(opts)
    out = {}
    for f in dataclasses.fields(opts):
        t = hints.get(f.name, object)
        kinds = tuple(a for a in typing.get_args(t) if a is not type(None)) or (typing.get_origin(t) or t,)
        kinds = tuple(typing.get_origin(k) or k for k in kinds)
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
        out[f.name] = (kinds if len(kinds) > 1 else kinds[0], default)
    return out


def build_spec(data: dict, path: Path) -> TaskSpec:
    """A validated `TaskSpec` from a task file's keys: unknown keys and wrong types are refused, the
    protocol's option defaults filled in (so they are part of the hash), metrics checked."""
    import dataclasses

    from evalkit.tasks.base import protocols

    missing = [k for k in (("name", "type") if data.get("type") == "suite" else REQUIRED) if k not in data]
    if missing:
        raise TaskError(f"{path}: missing keys {', '.join(missing)}.")
    kind = data["type"]
    if kind == "suite":
        _check_keys(path, data, SUITE_KEYS, "a suite")
        members = [_member(path, m) for m in data.get("tasks") or []]
        if not members and not data.get("members_of"):
            raise TaskError(f"{path}: a suite needs `tasks:` (task names, wds/NAME or other suites).")
        partial = [str(p) for p in data.get("partial") or []]
        return TaskSpec(name=data["name"], type="suite", dataset=data["name"], split="", metrics=["average"],
                        main_metric="average", options={"tasks": members, "partial": partial,
                                                        "members_of": [str(m) for m in data.get("members_of") or []],
                                                        "description": data.get("description", "")},
                        source=str(path))
    protos = protocols()
    if kind not in protos:
        raise TaskError(f"{path}: unknown type '{kind}' (known: {', '.join(sorted([*protos, 'suite']))}).")
    proto = protos[kind]
    fields = _option_fields(proto)
    _check_keys(path, data, {**COMMON_KEYS, **{k: t for k, (t, _) in fields.items()}}, f"a {kind} task")
    options = {k: data[k] for k in fields if k in data}
    for k, (_, default) in fields.items():
        if k not in options:
            if default is dataclasses.MISSING:
                raise TaskError(f"{path}: a {kind} task needs '{k}'.")
            options[k] = default
    for k in ("default_root", "description"):
        if k in data:
            options[k] = data[k]
    known = list(proto.default_metrics)
    metrics = list(data.get("metrics") or known)
    bad = [m for m in metrics if m not in known]
    if bad:
        raise TaskError(f"{path}: metrics {', '.join(bad)} are not computed by {kind} (it computes {', '.join(known)}).")
    main = data.get("main_metric") or (proto.default_main_metric if proto.default_main_metric in metrics else metrics[0])
    if main not in metrics:
        raise TaskError(f"{path}: main_metric '{main}' is not one of the task's metrics ({', '.join(metrics)}).")
    spec = TaskSpec(name=data["name"], type=kind, dataset=data["dataset"], split=data.get("split", "test"),
                    classnames=data.get("classnames"), templates=data.get("templates"), metrics=metrics,
                    main_metric=main, options=options, source=str(path))
    proto.check_options(spec)
    return spec


def _member(path: Path, m: object) -> dict:
    """A suite member: `NAME`, or `{task: NAME, main_metric: M}` (the metric the average takes)."""
    if isinstance(m, str):
        return {"task": m}
    if isinstance(m, dict) and isinstance(m.get("task"), str) and set(m) <= {"task", "main_metric"}:
        return dict(m)
    raise TaskError(f"{path}: suite member {m!r} must be a task name or {{task: NAME, main_metric: METRIC}}.")


def task_files() -> dict[str, Path]:
    """name -> file of every task file (earlier task folders override later ones)."""
    files: dict[str, Path] = {}
    for d in reversed(task_dirs()):
        for f in sorted(d.glob("*.yaml")):
            data = _load_yaml(f)
            files[str(data.get("name") or f.stem)] = f
    return files


def read_task_file(path: Path, files: dict[str, Path] | None = None) -> TaskSpec:
    return build_spec(_raw(Path(path), files=files if files is not None else task_files()), Path(path))


def all_tasks() -> dict[str, TaskSpec]:
    """Every registered task and suite, each file validated (a bad file stops here, before any work)."""
    files = task_files()
    return {name: read_task_file(f, files) for name, f in files.items()}


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
    if "/" in name or name.endswith((".yaml", ".yml")):
        path = Path(name)
        if path.is_file():
            return read_task_file(path)
    close = difflib.get_close_matches(name, list(tasks), n=5, cutoff=0.4)
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise TaskError(f"Unknown task '{name}'.{hint} `evalkit tasks` lists them; `wds/NAME` reads a clip_benchmark wds folder.")


def suite_members(spec: TaskSpec, stack: tuple[str, ...] = ()) -> TaskSpec:
    """A suite with the members (and partial members) of its `members_of:` suites spliced in first."""
    from dataclasses import replace

    if not spec.options.get("members_of"):
        return spec
    tasks, partial = [], []
    for other in spec.options["members_of"]:
        if other in (*stack, spec.name):
            raise TaskError(f"suite {spec.name} ({spec.source}): members_of cycle ({' -> '.join([*stack, spec.name, other])}).")
        base = get_task(other)
        if base.type != "suite":
            raise TaskError(f"suite {spec.name} ({spec.source}): members_of: {other} is not a suite.")
        base = suite_members(base, (*stack, spec.name))
        tasks += base.options["tasks"]
        partial += base.options["partial"]
    opts = {**spec.options, "tasks": [*tasks, *spec.options["tasks"]], "partial": [*partial, *spec.options["partial"]],
            "members_of": []}
    return replace(spec, options=opts)


def expand(names: list[str]) -> tuple[list[TaskSpec], list[TaskSpec]]:
    """(tasks to run, suites to average): suites replaced by their members (suites of suites
    flattened), each task once, in order; a suite that contains itself is refused."""
    tasks: dict[str, TaskSpec] = {}
    suites: dict[str, TaskSpec] = {}

    def visit(spec: TaskSpec, stack: tuple[str, ...]) -> None:
        if spec.type != "suite":
            tasks.setdefault(spec.name, spec)
            return
        if spec.name in stack:
            raise TaskError(f"suite {spec.name} ({spec.source}) contains itself: {' -> '.join([*stack, spec.name])}.")
        spec = suite_members(spec)
        for m in spec.options["tasks"]:
            visit(get_task(m["task"]), (*stack, spec.name))
        suites.setdefault(spec.name, spec)

    for n in names:
        visit(n if isinstance(n, TaskSpec) else get_task(n), ())
    return list(tasks.values()), list(suites.values())
