"""Layering: every package imports only the layers before it (data, models, grids, tasks, results, engine,
cluster, fit, report, then the CLI); the embedded world is a plug-in nobody imports by name (its
`embedded:` data roots and `${EVALKIT_EMBEDDED_HOME}` resolve through the registry it fills), and model
sources are parsed in one place."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _util import REPO

LOWER_LAYERS = ("evalkit/data", "evalkit/models")
PLUGIN = "evalkit.embedded"


def _modules(*folders: str) -> list[Path]:
    files = [p for f in folders for p in sorted((REPO / f).rglob("*.py"))]
    assert files
    return files


def _imports(path: Path, src: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every import in a file (or in `src`, read as if it were that file): import
    statements anywhere (also inside functions) and import_module / __import__ calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text() if src is None else src, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the file's package
                pkg = ".".join(path.relative_to(REPO).with_suffix("").parts[:-node.level])
                base = f"{pkg}.{base}" if base else pkg
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


# The layers in order (DESIGN.md): a module may import its own layer and those before it, never a later one.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("evalkit.errors", "evalkit.registry", "evalkit.atomic", "evalkit.progress"),
    ("evalkit.data",),
    ("evalkit.models",),
    ("evalkit.grids",),
    ("evalkit.tasks",),
    ("evalkit.results",),
    ("evalkit.engine",),
    ("evalkit.cluster",),
    ("evalkit.fit",),
    ("evalkit.report",),
    ("evalkit.cli", "evalkit"),  # the CLI, and evalkit/__init__.py's lazy evaluate()
)


def _layer(module: str) -> int | None:
    """The layer of a dotted evalkit module (longest prefix wins: `evalkit` itself is the top)."""
    best, index = "", None
    for i, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, index = name, i
    return index


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _back_imports(paths: list[Path], sources: dict[Path, str] | None = None) -> list[str]:
    bad = []
    for p in paths:
        me = _module_name(p)
        if me == PLUGIN or me.startswith(PLUGIN + "."):
            continue  # the plug-in sits above every layer it uses; nothing may import it (below)
        mine = _layer(me)
        assert mine is not None, f"{p.relative_to(REPO)}: in no layer; add its package to LAYERS"
        for line, mod in _imports(p, (sources or {}).get(p)):
            if not mod.startswith("evalkit.") or mod == PLUGIN or mod.startswith(PLUGIN + "."):
                continue
            theirs = _layer(mod)
            if theirs is not None and theirs > mine:
                bad.append(f"{p.relative_to(REPO)}:{line}: imports {mod} (layer {theirs} > {mine})")
    return bad


def test_every_package_imports_only_earlier_layers():
    bad = _back_imports(_modules("evalkit"))
    assert not bad, "a module imports a later layer:\n" + "\n".join(bad)


def test_a_planted_back_import_is_caught():
    """The check fails on a back-import written in any form, in any package (here: models -> engine,
    data -> results inside a function, grids -> cli)."""
    planted = {REPO / "evalkit" / "models" / "factory.py": "from evalkit.engine.loop import run\n",
               REPO / "evalkit" / "data" / "roots.py": "def f():\n    from evalkit.results import store\n",
               REPO / "evalkit" / "grids" / "zoo.py": "import importlib\nimportlib.import_module('evalkit.cli')\n"}
    bad = _back_imports(list(planted), planted)
    assert {b.split(":")[0] for b in bad} == {str(p.relative_to(REPO)) for p in planted}, bad
    assert not _back_imports(list(planted))  # the real files are clean


def test_nothing_imports_the_embedded_world_by_name():
    bad = [f"{p.relative_to(REPO)}:{line}: {mod}" for p in _modules("evalkit")
           if not _module_name(p).startswith(PLUGIN)
           for line, mod in _imports(p) if mod == PLUGIN or mod.startswith(PLUGIN + ".")]
    assert not bad, "only the registry (entry point evalkit.plugins) may load evalkit.embedded:\n" + "\n".join(bad)


def test_data_and_models_never_import_the_embedded_world():
    bad = [f"{p.relative_to(REPO)}:{line}: {mod}" for p in _modules(*LOWER_LAYERS)
           for line, mod in _imports(p) if mod == PLUGIN or mod.startswith(PLUGIN + ".")]
    assert not bad, "evalkit/data and evalkit/models must not import evalkit.embedded:\n" + "\n".join(bad)


def test_the_import_check_sees_every_form():
    src = ("import evalkit.embedded.paths\nfrom evalkit import embedded\nfrom ..embedded import world\n"
           "def f():\n    from evalkit.embedded.paths import data_root\n    importlib.import_module('evalkit.embedded')\n")
    mods = [m for _, m in _imports(REPO / "evalkit" / "models" / "probe.py", src)]
    assert {"evalkit.embedded.paths", "evalkit.embedded", "evalkit.embedded.world"} <= set(mods)
    assert sum(m == PLUGIN or m.startswith(PLUGIN + ".") for m in mods) >= 5


def _run(code: str, **env: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", **env})
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().splitlines()[-1]


def test_embedded_locations_resolve_through_the_registry(tmp_path):
    """In a fresh process: importing every data and models module leaves evalkit.embedded unimported;
    the first lookup of `embedded:` or `${EVALKIT_EMBEDDED_HOME}` imports it (the `evalkit.plugins` entry point)
    and resolves to the embedded world's folders."""
    import yaml

    defaults = {t: yaml.safe_load((REPO / "tasks" / f"{t}.yaml").read_text())["default_root"]
                for t in ("shapes", "shapes_coco", "shapes_flickr", "shapes_ade20k")}
    assert all(d.startswith("embedded:") for d in defaults.values())
    code = f"""
import importlib, json, pkgutil, sys
import evalkit.data, evalkit.models
for pkg in (evalkit.data, evalkit.models):
    for m in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(pkg.__name__ + "." + m.name)
before = "{PLUGIN}" in sys.modules
from importlib.metadata import entry_points
from evalkit.data.roots import resolve_root
PLUGINS = {{e.name: e.value for e in entry_points(group='evalkit.plugins')}}
from evalkit.grids.zoo import zoo_spec
roots = {{t: str(resolve_root(t, None, d)) for t, d in {defaults!r}.items()}}
print(json.dumps({{"before": before, "after": "{PLUGIN}" in sys.modules, "plugins": PLUGINS, "roots": roots,
                  "zoo": zoo_spec("tinyclip-S").pretrained, "grid_root": zoo_spec("mammut-tiny-S").pretrained}}))
"""
    home = tmp_path / "home"
    out = json.loads(_run(code, EVALKIT_EMBEDDED_HOME=str(home), EVALKIT_CONFIG=str(tmp_path / "none.yaml")))
    assert out["before"] is False and out["after"] is True
    assert out["plugins"] == {"embedded": PLUGIN}
    data = REPO / "evalkit" / "embedded" / "data"
    assert out["roots"] == {"shapes": str(data / "imagenet_folder"), "shapes_coco": str(data / "mscoco"),
                            "shapes_flickr": str(data / "flickr30k"), "shapes_ade20k": str(data / "ADEChallengeData2016")}
    assert all(Path(p).is_dir() for p in out["roots"].values())
    assert out["zoo"] == str(home.resolve() / "runs" / "tinyclip-S_s2k" / "checkpoints" / "epoch_4.pt")
    assert out["grid_root"].startswith(str(home.resolve() / "runs" / "mammut-tiny-S_s4k"))


def test_registry_answers_plugins_and_leaves_the_rest(tmp_path):
    from evalkit.data import roots

    with roots.ROOT_SCHEMES.preserved(), roots.PATH_VARIABLES.preserved():
        roots.register_root_scheme("testscheme", lambda rest: tmp_path / "ts" / rest)
        roots.register_path_variable("EVALKIT_TEST_VAR", lambda: tmp_path / "var")
        assert roots.resolve_root("ds", None, "testscheme:a/b") == tmp_path / "ts" / "a/b"
        assert roots.resolve_root("ds", None, str(tmp_path / "plain")) == tmp_path / "plain"
        assert roots.resolve_root("ds", None, "nosuchscheme:x") == Path("nosuchscheme:x")  # a path, as before
        assert roots.expand_path_variables("${EVALKIT_TEST_VAR}/x ${UNSET_THING} $HOME") == \
            f"{tmp_path / 'var'}/x ${{UNSET_THING}} $HOME"
    assert "testscheme" not in roots.ROOT_SCHEMES and "EVALKIT_TEST_VAR" not in roots.PATH_VARIABLES


def test_shapes_runs_with_default_roots(tmp_path):
    """`evalkit run --tasks shapes` with nothing but the task's default root and a zoo model whose weights
    sit under ${EVALKIT_EMBEDDED_HOME}: both resolve through the plug-in registry."""
    from _embedded import ensure_grid

    ensure_grid()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVALKIT_DATA_ROOT")}
    env.update(HF_HUB_OFFLINE="1", EVALKIT_CONFIG=str(tmp_path / "none.yaml"))
    r = subprocess.run([sys.executable, "-m", "evalkit.cli", "run", "--model", "tinyclip-S", "--tasks", "shapes",
                        "--device", "cpu", "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert "1 ok, 0 failed" in r.stdout + r.stderr


def test_one_parser_for_model_sources():
    """No prefix check of a model source outside evalkit/models/source.py in the lower layers: a string
    literal `hf-hub:`/`hf-hub-file:`/`local-dir:` given to startswith/endswith or compared with ==."""
    prefixes = ("hf-hub", "local-dir")
    bad = []
    for path in _modules("evalkit"):
        if path.name == "source.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            lits = []
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("startswith", "removeprefix", "partition", "split") and node.args:
                arg = node.args[0]
                lits = [e for e in (arg.elts if isinstance(arg, ast.Tuple) else [arg]) if isinstance(e, ast.Constant)]
            elif isinstance(node, ast.Compare):
                lits = [e for e in node.comparators if isinstance(e, ast.Constant)]
            if any(isinstance(c.value, str) and c.value.startswith(prefixes) for c in lits):
                bad.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not bad, "parse these with evalkit.models.source.parse_source:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", ["evalkit.models.source", "evalkit.models.spec", "evalkit.grids.zoo"])
def test_source_parsing_stays_light(module):
    """The CLI parses sources and reads the zoo before any model is loaded: no torch there."""
    out = _run(f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')))")
    assert out == "[]"
