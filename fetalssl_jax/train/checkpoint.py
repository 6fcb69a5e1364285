"""Checkpoints with orbax: periodic, keep-last-K, resumable, atomic; and the exported backbone.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save never leaves a
half-written "latest" checkpoint and never removes the previous good one; the run that holds the workdir's lock
removes the temporary directories a killed run left. Every checkpoint carries the fingerprint of its run's config
(`train.fingerprint`); resuming a workdir written by another config is an error naming every differing key,
instead of a silent continuation of another run or a shape mismatch deep inside orbax.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp

from fetalssl_jax.errors import RunStopped, UserError
from fetalssl_jax.runtime.workdir_lock import holds_lock
from fetalssl_jax.train.fingerprint import ensure_resumable
from fetalssl_jax.train.state import TrainState


class CheckpointWriteError(RunStopped):
    """A checkpoint could not be written (a full disk, an unwritable workdir); the previous ones are intact."""


def abstract_tree(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays, for restoring into the same placement."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """Saves and restores the TrainState of one run in `<workdir>/checkpoints`.

    Every checkpoint's meta carries the `fingerprint` of the run's config; a checkpoint is resumed only by a config
    with the same fingerprint (`ensure_resumable`; with `allow_extend` the run's length may differ). `extra_items`
    names pytrees saved beside the state (a classifier's best weights so far); pretraining and classification share
    this one class.
    """

    def __init__(
        self,
        workdir: str | pathlib.Path,
        fingerprint: Mapping[str, Any],
        keep: int = 3,
        allow_extend: bool = False,
        extra_items: Sequence[str] = (),
    ):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.fingerprint = json.loads(json.dumps(dict(fingerprint)))  # tuples -> lists, as they come back from JSON
        self.allow_extend = allow_extend
        # The temporary directories of writes a killed run left are removed, by the run that holds the workdir's
        # lock only (no other can be writing then); a reader leaves them.
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False,
                                               cleanup_tmp_directories=holds_lock(workdir))  # fmt: skip
        self.extra_items = tuple(extra_items)
        item_names = ("state", *self.extra_items, "meta")
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=item_names)

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(
        self, state: TrainState, extra_meta: dict[str, Any] | None = None, extra_items: dict[str, Any] | None = None
    ) -> int:
        """Writes the state (and the `extra_items` named at construction) at its step (no-op if that step is already
        saved); returns the step."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return step
        meta = {"step": step, "fingerprint": self.fingerprint, **(extra_meta or {})}
        items = {name: ocp.args.StandardSave(tree) for name, tree in (extra_items or {}).items()}
        if set(items) != set(self.extra_items):
            raise ValueError(f"save() got the items {sorted(items)}; this checkpointer saves {list(self.extra_items)}")
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta), **items),
            )
            self.manager.wait_until_finished()
        except (OSError, ValueError) as error:  # tensorstore reports a failed write as a ValueError
            latest = self.latest_step()
            kept = f"the last good checkpoint (step {latest}) is kept" if latest is not None else "no checkpoint yet"
            raise CheckpointWriteError(
                f"could not write the checkpoint of step {step} in {self.directory} (full disk or unwritable "
                f"workdir?): {error}\n{kept}; free space or fix the permissions, then run again to resume."
            ) from error
        return step

    def check_resumable(self, step: int | None = None) -> None:
        """Raises WorkdirMismatchError, naming every differing key with both values, if checkpoint `step` (default:
        the newest; none: nothing to check) was written by a config with another fingerprint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return
        stored = self.meta(step).get("fingerprint")
        if stored is None:
            raise UserError(
                f"{self.directory} holds a checkpoint of an earlier fetalssl_jax release; use a new workdir"
            )
        hint = "use a new --workdir, or the config that wrote it"
        if not self.allow_extend:
            hint += " (to train it for another length: --config.allow_extend=True)"
        ensure_resumable(stored, self.fingerprint, self.allow_extend, what=f"{self.directory} (step {step})", hint=hint)

    def meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of checkpoint `step` (identity, fingerprint and what `save` got as `extra_meta`)."""
        return self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta

    def restore(
        self, step: int, state: TrainState, extra_templates: dict[str, Any] | None = None
    ) -> tuple[TrainState, dict[str, Any]]:
        """(state, extra items) of checkpoint `step`, checked with `check_resumable`: the state restored into the
        placement of `state`, each extra item into the structure of its template."""
        self.check_resumable(step)
        extra = {name: ocp.args.StandardRestore(t) for name, t in (extra_templates or {}).items()}
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree(state)), **extra)
        )
        return restored.state, {name: restored[name] for name in extra}

    def restore_latest(self, state: TrainState) -> TrainState:
        """The newest checkpoint restored into the placement of `state`, or `state` itself if there is none."""
        step = self.latest_step()
        if step is None:
            return state
        return self.restore(step, state)[0]

    def close(self) -> None:
        self.manager.close()


def export_backbone(
    directory: str | pathlib.Path, variables: dict[str, Any], description: dict[str, Any]
) -> pathlib.Path:
    """Writes backbone variables ({'params', 'batch_stats'}) and a JSON description for downstream use.

    Called by every process of a multi-process run (orbax synchronises them); process 0 writes."""
    directory = pathlib.Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "variables", jax.device_get(variables), force=True)
    checkpointer.wait_until_finished()
    if jax.process_index() != 0:
        return directory
    tmp = directory / "backbone.json.tmp"
    tmp.write_text(json.dumps(description, indent=2))
    tmp.replace(directory / "backbone.json")  # atomic rename
    return directory


def load_backbone(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, description) written by `export_backbone`."""
    directory = pathlib.Path(directory).absolute()
    description_file = directory / "backbone.json"
    if not description_file.exists():
        raise UserError(f"{description_file} not found: {directory} is not an exported backbone")
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return variables, json.loads(description_file.read_text())
