"""Checkpoints with orbax: periodic, keep-last-K, resumable, atomic; and the exported backbone.

Orbax writes each step into a temporary directory and renames it when complete, so a crash mid-save never
leaves a half-written "latest" checkpoint and never removes the previous good one. Every checkpoint carries
the run's identity (method, architecture, heads); resuming a workdir written by another method or model is an
error that says so instead of a shape mismatch deep inside orbax.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from fetalssl_jax.train.state import TrainState


class CheckpointMismatchError(RuntimeError):
    """The workdir holds checkpoints of a different method or architecture."""


def abstract_tree(tree: Any) -> Any:
    """Shapes, dtypes and shardings of a pytree of arrays, for restoring into the same placement."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def _differences(expected: dict, found: dict) -> list[str]:
    keys = sorted(set(expected) | set(found))
    return [
        f"{k}: checkpoint has {found.get(k)!r}, config has {expected.get(k)!r}"
        for k in keys
        if expected.get(k) != found.get(k)
    ]


class Checkpointer:
    """Saves and restores the TrainState of one run in `<workdir>/checkpoints`."""

    def __init__(self, workdir: str | pathlib.Path, identity: dict[str, Any], keep: int = 3):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.identity = json.loads(json.dumps(identity))  # tuples -> lists, as they come back from JSON
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        """Step of the newest complete checkpoint, or None."""
        return self.manager.latest_step()

    def save(self, state: TrainState, extra_meta: dict[str, Any] | None = None) -> int:
        """Writes the state at its step (no-op if that step is already saved); returns the step."""
        step = int(state.step)
        if step in self.manager.all_steps():
            return step
        meta = {"identity": self.identity, "step": step, **(extra_meta or {})}
        self.manager.save(
            step, args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        )
        self.manager.wait_until_finished()
        return step

    def check_identity(self, step: int) -> None:
        """Raises CheckpointMismatchError if checkpoint `step` was written by another method or model."""
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        found = meta.get("identity", {})
        diffs = _differences(self.identity, found)
        if diffs:
            raise CheckpointMismatchError(
                f"{self.directory} holds a checkpoint (step {step}) of another run: "
                + "; ".join(diffs)
                + ". Use a new --workdir, or the config that wrote it."
            )

    def restore_latest(self, state: TrainState) -> TrainState:
        """The newest checkpoint restored into the placement of `state`, or `state` itself if there is none."""
        step = self.latest_step()
        if step is None:
            return state
        self.check_identity(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_tree(state)))
        restored = self.manager.restore(step, args=args)
        return restored.state

    def close(self) -> None:
        self.manager.close()


def export_backbone(
    directory: str | pathlib.Path, variables: dict[str, Any], description: dict[str, Any]
) -> pathlib.Path:
    """Writes backbone variables ({'params', 'batch_stats'}) and a JSON description for downstream use."""
    directory = pathlib.Path(directory).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / "variables", jax.device_get(variables), force=True)
    checkpointer.wait_until_finished()
    tmp = directory / "backbone.json.tmp"
    tmp.write_text(json.dumps(description, indent=2))
    tmp.replace(directory / "backbone.json")  # atomic rename
    return directory


def load_backbone(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, description) written by `export_backbone`."""
    directory = pathlib.Path(directory).absolute()
    description_file = directory / "backbone.json"
    if not description_file.exists():
        raise FileNotFoundError(f"{description_file} not found: {directory} is not an exported backbone")
    variables = ocp.StandardCheckpointer().restore(directory / "variables")
    return variables, json.loads(description_file.read_text())
