"""Every command in README.md and docs/*.md is checked, so none can rot.

Each line of a bash block is one of: an install or test line (it must be a line that CI runs: `.ci/run`), a
`python -m fetalssl_jax.main` command (its config file, preset and `--config.*` overrides load and validate as the
command line would, its other flags exist), a `tfds build` of one of our builders (the builder exists and its
`--config` names or describes a valid config), a benchmark (every flag it passes is one the script's `--help`
lists), or a variable assignment. Anything else fails the test: a new kind of command needs a check here. Python
blocks compile, and every name they use from `fetalssl_jax` exists. README's own-scans walkthrough also runs end to
end in `tests/apply/test_walkthrough.py`.
"""

from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import re
import shlex
import sys

import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, parse_value, set_by_path
from fetalssl_jax.validation import ConfigError

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MAIN_FLAGS = {"config", "workdir", "distributed", "coordinator_address", "num_processes", "process_id"}
TFDS_FLAGS = {"config", "manual_dir", "data_dir", "beam_pipeline_options", "overwrite"}
_BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)


def blocks(language: str) -> list[tuple[str, str]]:
    """(where, text) of every fenced block of `language` in the pages."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for match in _BLOCK.finditer(text):
            if match.group(1) == language:
                line = text[: match.start()].count("\n") + 2
                found.append((f"{page.relative_to(REPO)}:{line}", match.group(2)))
    return found


def commands(text: str) -> list[list[str]]:
    """The commands of a bash block as argv lists: continuations joined, comments dropped, `&&` split, `$VAR` and
    `~` expanded from the block's own assignments."""
    variables = {"HOME": "/home/user"}
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        for part in shlex.split(line, comments=True) and " ".join(
            shlex.quote(t) for t in shlex.split(line, comments=True)
        ).split(" '&&' "):
            argv = [os.path.expanduser(re.sub(r"\$(\w+)", lambda m: variables.get(m[1], m[0]), t))
                    for t in shlex.split(part)]  # fmt: skip
            while argv and re.fullmatch(r"[A-Z_]+=.*", argv[0]):
                key, _, value = argv.pop(0).partition("=")
                variables[key] = value
            if argv:
                out.append(argv)
    return out


@functools.cache
def ci_lines() -> str:
    return (REPO / ".ci" / "run").read_text()


def _flags(argv: list[str]) -> list[tuple[str, str | None]]:
    """(name, value) of every --flag in argv; a flag's value is the next word when not given with '='."""
    found, i = [], 0
    while i < len(argv):
        word = argv[i]
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                value, i = argv[i + 1], i + 1
            found.append((name, value if (eq or value) else None))
        i += 1
    return found


def check_main(argv: list[str]) -> None:
    """A `python -m fetalssl_jax.main` command: its config loads with every override and validates for its task."""
    from fetalssl_jax.main import validate

    flags = _flags(argv)
    unknown = [n for n, _ in flags if n.split(".")[0] not in MAIN_FLAGS]
    assert not unknown, f"flags the command line does not define: {unknown}"
    spec = dict(flags)["config"]
    path, sep, arg = spec.partition(":")
    config = load_config(f"{REPO / path}{sep}{arg}")
    for name, value in flags:
        if name.startswith("config."):
            set_by_path(config, name[len("config.") :], parse_value(value))
    try:
        validate(config)
    except ConfigError as e:  # a distillation teacher is read when validated: the run an earlier command makes
        teacher = config.get("method_kwargs", {}).get("teacher")
        assert str(e).startswith(f"config.method_kwargs.teacher = {teacher!r}: cannot be read") and (
            "no such file or directory" in str(e) and "\n" not in str(e)
        ), e


def check_tfds(argv: list[str]) -> None:
    """A `tfds build data_builders/<name>`: the builder exists, its flags are known, its --config is valid."""
    assert argv[:2] == ["tfds", "build"] and argv[2].startswith("data_builders/"), argv
    name = argv[2].split("/")[1]
    flags = dict(_flags(argv[3:]))
    assert set(flags) <= TFDS_FLAGS, f"unknown tfds build flags {set(flags) - TFDS_FLAGS}"
    sys.path.insert(0, str(REPO / "data_builders"))
    try:
        module = importlib.import_module(f"{name}.{name}_dataset_builder")
    finally:
        sys.path.remove(str(REPO / "data_builders"))
    builder = next(v for v in vars(module).values() if isinstance(v, type) and getattr(v, "BUILDER_CONFIGS", None))
    config = flags.get("config")
    if config is None:
        return
    if config.startswith("{"):
        config_class = type(builder.BUILDER_CONFIGS[0])
        made = config_class(**json.loads(config))  # an unknown key is a TypeError
        checks = getattr(module, "_check_config", None)
        if checks:
            checks(made)
    else:
        assert config in {c.name for c in builder.BUILDER_CONFIGS}, f"{name} has no config {config!r}"


@functools.cache
def script_flags(script: str) -> frozenset[str]:
    """The flags a benchmark script defines: argparse's `add_argument("--x")` and absl's `DEFINE_*("x")` (read from
    its source, so that nothing is imported or run)."""
    found = set()
    for node in ast.walk(ast.parse((REPO / script).read_text())):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        if node.func.attr == "add_argument":
            found |= {n[2:] for n in names if n.startswith("--")} | {n for n in names if not n.startswith("-")}
        elif node.func.attr.startswith("DEFINE_") and names:
            found.add(names[0])
    return frozenset(found)


def check_benchmark(argv: list[str]) -> None:
    """`python benchmarks/<script>.py ...`: every flag is one the script defines; config overrides load."""
    script = argv[1]
    assert (REPO / script).is_file(), f"{script} does not exist"
    flags = _flags(argv[2:])
    for name, value in flags:
        if name.startswith("config.") and "config" in script_flags(script):
            config = load_config(str(REPO / dict(flags)["config"]))
            set_by_path(config, name[len("config.") :], parse_value(value))
        else:
            assert name in script_flags(script), f"{script} has no flag --{name}"
    for word in argv[2:]:
        if not word.startswith("-") and word.endswith(".json") and word.startswith("benchmarks/"):
            assert (REPO / word).exists(), f"{word} does not exist"


def check(argv: list[str]) -> None:
    """Dispatches one command to its check; an unknown kind of command fails."""
    while argv and argv[0] in ("srun",):  # launchers: the command they start is checked
        argv = argv[1:]
    line = " ".join(argv)
    if argv[0] in ("pip", "pytest"):
        assert line in ci_lines().replace('"', ""), f"CI (.ci/run) does not run {line!r}"
    elif argv[:3] == ["python", "-m", "fetalssl_jax.main"]:
        check_main(argv[3:])
    elif argv[:2] == ["tfds", "build"]:
        check_tfds(argv)
    elif argv[0] == "python" and argv[1].startswith("benchmarks/"):
        check_benchmark(argv)
    else:
        pytest.fail(f"no check for this kind of command: {line}")


BASH = [(where, argv) for where, text in blocks("bash") for argv in commands(text)]


@pytest.mark.parametrize(("where", "argv"), BASH, ids=[f"{w} {' '.join(a)[:60]}" for w, a in BASH])
def test_every_documented_command_is_valid(where, argv):
    check(argv)


def test_the_pages_have_commands_and_the_checks_can_fail():
    assert len(BASH) > 30
    with pytest.raises(AssertionError, match="no config 'pairz'"):
        check(["tfds", "build", "data_builders/fetal_us_video", "--config", "pairz"])
    with pytest.raises(Exception, match="batch_size = -4"):
        check(["python", "-m", "fetalssl_jax.main", "--config", "configs/barlow.py", "--config.batch_size=-4"])
    with pytest.raises(AssertionError, match="CI .* does not run"):
        check(["pip", "install", "-e", ".[everything]"])
    with pytest.raises(pytest.fail.Exception, match="no check"):
        check(["rm", "-rf", "/"])


def _project_names(tree: ast.AST) -> list[tuple[str, str]]:
    """(module, attribute) of every `alias.attr` and `from module import name` that refers to fetalssl_jax."""
    aliases, used = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fetalssl_jax"):
            for a in node.names:
                used.append((node.module, a.name))
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            aliases.update({(a.asname or a.name): a.name for a in node.names if a.name.startswith("fetalssl_jax")})
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases:
            used.append((aliases[node.value.id], node.attr))
    return used


@pytest.mark.parametrize(("where", "text"), blocks("python"), ids=[w for w, _ in blocks("python")])
def test_every_documented_python_block_uses_names_that_exist(where, text):
    tree = ast.parse(text)
    for module, name in _project_names(tree):
        try:
            target = importlib.import_module(module)
        except ModuleNotFoundError:  # `from fetalssl_jax import apply`: a submodule as the attribute
            parent, _, child = module.rpartition(".")
            target = getattr(importlib.import_module(parent), child)
        assert hasattr(target, name) or importlib.util.find_spec(f"{module}.{name}"), f"{module} has no {name}"
