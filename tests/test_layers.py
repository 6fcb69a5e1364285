"""The package's layers point down (docs/design.md, "Layers"): a module imports only from its own layer or from
layers below it, function-local imports included; build-time code is imported by nothing at run time."""

import ast
import pathlib

import pytest
from conftest import REPO

PACKAGE = REPO / "fetalssl_jax"
# Bottom to top; a module belongs to the layer of its first dotted component under fetalssl_jax.
LAYERS = (
    ("errors", "validation"),  # the user-error types and the collector of config problems, used by every layer
    ("runtime",),  # devices, shardings, compilation cache, TensorFlow kept off accelerators, huge pages
    ("models",),
    ("data",),
    ("methods", "losses"),
    ("eval",),
    ("config_lib", "presets"),  # config files: loading, presets and recipes
    ("train",),
    ("downstream",),
    ("apply",),  # a user's own scans: loading any model, embed, predict, select
    ("main",),
)
RANK = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}
BUILD_TIME = "fetalssl_jax.data.build"
# Layers that read raw scan files as the builders do (`data/build/readers.py`): applying a model to a user's own
# videos and images, where training reads only built datasets.
READS_RAW_FILES = ("apply",)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, module) of every fetalssl_jax import in `path`, wherever it sits in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return [(line, name) for line, name in found if name.startswith("fetalssl_jax.")]


def _layer(module: str) -> str:
    return module.split(".")[1]


def upward_imports(root: pathlib.Path = PACKAGE) -> list[str]:
    """'file:line imports module (layer a above layer b)' for every import that points up or into build code."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        module = _module_name(path)
        if module == "fetalssl_jax":
            continue
        here = _layer(module)
        for line, imported in _imports(path):
            there = _layer(imported)
            where = f"{path.relative_to(REPO)}:{line} imports {imported}"
            if there not in RANK or here not in RANK:
                problems.append(f"{where}: {here if here not in RANK else there!r} is in no layer of LAYERS")
            elif RANK[there] > RANK[here]:
                problems.append(f"{where}: layer {there!r} is above {here!r}")
            elif imported.startswith(BUILD_TIME) and not module.startswith(BUILD_TIME) and here not in READS_RAW_FILES:
                problems.append(f"{where}: build-time code imported at run time")
    return problems


def test_every_import_points_down():
    assert upward_imports() == []


def test_an_upward_import_is_found(tmp_path, monkeypatch):
    """The check itself can fail: a model that imports training, and a runtime module that imports a reader."""
    package = tmp_path / "fetalssl_jax"
    (package / "models").mkdir(parents=True)
    (package / "data").mkdir()
    (package / "models" / "bad.py").write_text("def f():\n    from fetalssl_jax.train.loop import train\n")
    (package / "data" / "sources.py").write_text("import fetalssl_jax.data.build.readers\n")
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    problems = upward_imports(package)
    assert problems == [
        "fetalssl_jax/data/sources.py:1 imports fetalssl_jax.data.build.readers: build-time code imported at run time",
        "fetalssl_jax/models/bad.py:2 imports fetalssl_jax.train.loop.train: layer 'train' is above 'models'",
    ]


@pytest.mark.parametrize("layer", sorted(RANK))
def test_every_layer_exists(layer):
    assert (PACKAGE / layer).is_dir() or (PACKAGE / f"{layer}.py").is_file()
