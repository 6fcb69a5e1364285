"""Experiment configs as files (big_vision style): loading, presets, command-line overrides.

Each experiment is one file in `configs/` with `get_config(arg)`: it builds its config (from `fetalssl_jax.presets`),
applies the preset named by `arg` (`--config configs/barlow.py:paper`) and locks it, so a key that does not exist is
an error, never a silently ignored typo. Command-line overrides (`--config.optim.lr_weights=0.1`) are applied by
ml_collections on top. The values are checked by the code that reads them (`validate` of each task's module).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

from ml_collections import ConfigDict

from fetalssl_jax.errors import UserError


class ConfigFileError(UserError, ValueError):
    """A config file, preset or override that cannot be read: the message names it and what is allowed."""


def apply_preset(
    config: ConfigDict, arg: str | None, presets: Mapping[str, Callable[[ConfigDict], None]]
) -> ConfigDict:
    """Applies the preset named `arg` (empty or None: the default) and locks the config.

    `arg` may also carry overrides after the preset, big_vision style: `paper,batch_size=1024`.
    """
    arg = (arg or "").strip()
    name, _, rest = arg.partition(",")
    name = name.strip() or "default"
    if name not in presets:
        raise ConfigFileError(f"unknown preset {name!r} for {config.method!r}; choose one of {sorted(presets)}")
    presets[name](config)
    config.preset = name
    config.lock()
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigFileError(f"config argument {item!r} is not key=value")
        set_by_path(config, key.strip(), parse_value(value.strip()))
    return config


def parse_value(text: str):
    """A command-line value: a Python literal (`0.1`, `(8, 8)`, `True`) where it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def unknown_key_message(config: ConfigDict, path: str) -> str | None:
    """None when `a.b.c` exists in `config`; otherwise a message naming the key and the valid keys where it failed."""
    node = config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            return f"unknown config key {path!r}: {where} has no key {part!r}; valid keys there: {valid}"
        node = node[part]
    return None


def set_by_path(config: ConfigDict, path: str, value) -> None:
    """Sets `a.b.c` in a (locked) config; an unknown key is a ConfigFileError with `unknown_key_message`."""
    message = unknown_key_message(config, path)
    if message:
        raise ConfigFileError(message)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    if isinstance(value, (list, tuple)):
        with node.ignore_type():
            node[leaf] = value
    else:
        node[leaf] = value


def unknown_override_keys(config: ConfigDict, argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """Messages for the `--config.X=...` overrides in argv whose key X does not exist in `config`."""
    prefix = f"--{flag_name}."
    messages = []
    for arg in argv:
        if arg.startswith(prefix):
            message = unknown_key_message(config, arg[len(prefix) :].split("=", 1)[0])
            if message:
                messages.append(message)
    return messages


def load_config_module(path: str | os.PathLike):
    """Imports a config file as a module (configs are files, not an installed package)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigFileError(f"config file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"_fetalssl_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        raise ConfigFileError(f"{path}:{error.lineno}: {error.msg}") from None
    return module


_LOADING: set[pathlib.Path] = set()  # config files whose get_config() is running (a grid lists the others)


def load_config(path_and_arg: str) -> ConfigDict:
    """Loads `path.py[:arg]` the way `--config` does: imports the file and calls its `get_config(arg)`."""
    path, _, arg = path_and_arg.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise ConfigFileError(f"config file {path!r} has no get_config(arg) function")
    file = pathlib.Path(path).resolve()
    _LOADING.add(file)
    try:
        return module.get_config(arg or None)
    finally:
        _LOADING.discard(file)


def method_config_files(directory: str | os.PathLike) -> dict[str, pathlib.Path]:
    """{method: its config file} of the pretraining configs in `directory` (a file whose `get_config()` has a
    `method` and no `task`), found by the config's `method` key, not by the file's name; one file per method."""
    found: dict[str, pathlib.Path] = {}
    for file in sorted(pathlib.Path(directory).resolve().glob("*.py")):
        if file in _LOADING:  # the config asking (a grid) is no method's
            continue
        config = load_config(str(file))
        if "task" in config or not config.get("method"):
            continue
        if config.method in found:
            raise ValueError(f"{found[config.method]} and {file} both configure method {config.method!r}; keep one")
        found[config.method] = file
    return found
