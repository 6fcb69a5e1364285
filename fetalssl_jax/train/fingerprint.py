"""What a workdir's earlier run must share with a config that resumes or reuses it: the one rule every task applies.

A fingerprint is a config as {dotted key: JSON value} less the keys that never change what the run computes (its
task's `cosmetic` keys: reporting, cadence of checkpoints, caches). Each run writes config.json: the config and the
digest of its fingerprint. `ensure_resumable` compares a stored fingerprint with the wanted one for pretraining and
classifier checkpoints, finished classifier results, the grid's pretraining runs and the apply commands' outputs:
equal, or, with `allow_extend`, different only in the run's length.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections

from fetalssl_jax.errors import UserError

LENGTH_KEYS = ("num_steps", "num_epochs")  # the only keys `allow_extend` lets differ
# Keys added to a config after runs were written without them, with the value that computes what those runs did: a
# stored run that lacks such a key matches a config holding this value (so an upgrade does not strand a run).
ADDED_KEYS: dict[str, Any] = {
    "method_kwargs.centering": "centering",  # DINO's EMA centre, the only centering before Sinkhorn-Knopp (aad9635)
    "optim.clip_grad": 0.0,  # DINO's presets other than paper / dinov2 did not clip before the key was theirs
}
DIGEST_KEY = "fingerprint_sha256"  # written into config.json beside the config; never part of a fingerprint
_ABSENT = "<no such key>"


class WorkdirMismatchError(UserError, ValueError):
    """The workdir holds the checkpoint, results or outputs of another config."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}.{key}" if prefix else key).items()}


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


def fingerprint(
    config: Mapping | ml_collections.ConfigDict, cosmetic: Sequence[str] = (), ignore: Sequence[str] = ()
) -> dict[str, Any]:
    """`config` (a ConfigDict, or the dict of a run's config.json) as {dotted key: JSON value}, less the `cosmetic`
    keys of its task and `ignore` (a key also drops the keys below it)."""
    if isinstance(config, ml_collections.ConfigDict):
        tree = json.loads(config.to_json_best_effort())
    else:
        tree = json.loads(json.dumps(config, default=str))  # tuples -> lists, as in a config.json
    skip = (*cosmetic, DIGEST_KEY, *ignore)
    return {k: v for k, v in sorted(_flatten(tree).items()) if not _matches(k, skip)}


def digest(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint: two runs with the same digest compute the same thing."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def config_json(config: ml_collections.ConfigDict, cosmetic: Sequence[str] = ()) -> str:
    """A run's config.json: the resolved config and the digest of its fingerprint (`DIGEST_KEY`)."""
    tree = json.loads(config.to_json_best_effort())
    return json.dumps({**tree, DIGEST_KEY: digest(fingerprint(config, cosmetic))}, indent=2)


def stored_fingerprint(
    config_file: str | os.PathLike, cosmetic: Sequence[str] = (), ignore: Sequence[str] = ()
) -> dict[str, Any] | None:
    """The fingerprint of the config a run wrote into `config_file` (its config.json), or None without one."""
    file = pathlib.Path(config_file)
    return fingerprint(json.loads(file.read_text()), cosmetic, ignore) if file.is_file() else None


def differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every key whose value differs, sorted; `ignore`d keys left out. A key
    of `ADDED_KEYS` missing from `old` does not differ from its listed value in `new`."""
    keys = sorted(k for k in set(old) | set(new) if not _matches(k, ignore))
    found = [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys]
    return [(k, a, b) for k, a, b in found if a != b and not (a is _ABSENT and k in ADDED_KEYS and b == ADDED_KEYS[k])]


def format_differences(found: Sequence[tuple[str, Any, Any]], old_name: str = "checkpoint") -> str:
    """One line per differing key: `  optim.lr_weights: checkpoint has 0.2, config has 0.5`."""
    show = (lambda v: v if v is _ABSENT else repr(v))  # fmt: skip
    return "\n".join(f"  {k}: {old_name} has {show(a)}, config has {show(b)}" for k, a, b in found)


def ensure_resumable(
    stored: Mapping[str, Any] | None,
    wanted: Mapping[str, Any],
    allow_extend: bool = False,
    *,
    what: str,
    old_name: str = "checkpoint",
    hint: str = "use a new --workdir, or the config that wrote it",
) -> None:
    """Raises WorkdirMismatchError naming every differing key with both values unless `stored` (None: nothing
    stored yet) equals `wanted`; with `allow_extend`, `LENGTH_KEYS` may differ. `what` names the stored work."""
    if stored is None:
        return
    found = differences(stored, wanted, LENGTH_KEYS if allow_extend else ())
    if not found:
        return
    raise WorkdirMismatchError(
        f"{what} was made by another config; these keys differ (cosmetic keys never count):\n"
        f"{format_differences(found, old_name)}\n{hint[:1].upper()}{hint[1:]}."
    )
