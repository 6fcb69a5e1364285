"""Command line: `python -m fetalssl_jax.main --config configs/barlow.py[:preset] [--config.key=value ...]`.

The config file decides everything, including what runs (`config.task`, `TASKS`). `--workdir` is where the run's
files land; running the same command again resumes it. Launched as several processes (srun, a TPU pod,
`--coordinator_address`), pretraining runs on every device of every process (`runtime/distributed.py`).
A user's mistake (`errors.UserError`) is one line per problem and exit status 2; a run that stopped for a reason it
explains (`errors.RunStopped`) one line and exit status 1; anything else is a bug and raises with its traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

from fetalssl_jax.errors import RunStopped, UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file: path.py[:preset].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (default: workdirs/<method>[-<preset>]).")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "Several processes (hosts): 'auto' starts jax.distributed when the flags below, $JAX_COORDINATOR_ADDRESS, or "
    "srun / mpirun with more than one task say so; 'on' always (JAX detects SLURM, TPU pods, Kubernetes); 'off' never.",
)  # fmt: skip
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0 (several processes).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes (several processes).", lower_bound=1)
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes-1.", lower_bound=0)

# config.task -> the module that runs it: its `validate(config)` checks the config, `run(config, workdir)` runs the
# task and returns the line to print.
TASKS = {
    "pretrain": "fetalssl_jax.train.loop",
    "classify": "fetalssl_jax.downstream.classification",
    "grid": "fetalssl_jax.downstream.grid",
    "embed": "fetalssl_jax.apply.tasks",
    "predict": "fetalssl_jax.apply.tasks",
    "select": "fetalssl_jax.apply.tasks",
    "gradcam": "fetalssl_jax.downstream.gradcam",
    "tsne": "fetalssl_jax.downstream.embedding",
    "export": "fetalssl_jax.downstream.export",
}


class UsageError(UserError):
    """A mistake on the command line itself."""


def task_module(config):
    """The module that runs `config.task` (default: pretraining)."""
    task = config.get("task", "pretrain")
    if task not in TASKS:
        raise UsageError(f"config.task = {task!r}: must be one of {', '.join(map(repr, TASKS))}")
    return importlib.import_module(TASKS[task])


def validate(config) -> None:
    """Checks every value of `config` for its task (ConfigError listing every problem), before anything runs."""
    task_module(config).validate(config)


def _config_argument(argv: list[str]) -> str | None:
    """The value of --config (path.py[:preset]) on the command line, if any."""
    config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if config_path is None and "--config" in argv[:-1]:
        config_path = argv[argv.index("--config") + 1]
    return config_path


def _parse_flags(argv: list[str]) -> None:
    """Parses flags, turning ml_collections' bare KeyError/AttributeError on a typo into a message naming the key
    and its IOError on a missing config file into one line."""
    config_path = _config_argument(argv)
    file = config_path.split(":", 1)[0] if config_path else None
    if file and not os.path.isfile(file):
        found = sorted(os.listdir("configs")) if os.path.isdir("configs") else []
        hint = f"config files in configs/: {', '.join(f for f in found if f.endswith('.py'))}" if found else (
            "give the path of a config file, e.g. configs/barlow.py from the repository")  # fmt: skip
        raise UsageError(f"--config {config_path}: no such file {file!r}; {hint}")
    try:
        flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as error:
        messages = []
        if config_path:
            from fetalssl_jax.config_lib import load_config, unknown_override_keys

            messages = unknown_override_keys(load_config(config_path), argv)
        raise UsageError("; ".join(messages) or str(error)) from None
    if _CONFIG.value is None:
        raise UsageError("--config is required, e.g. --config configs/barlow.py")


def default_workdir(config) -> str:
    """workdirs/<method>, with the preset's name when it is not the default."""
    preset = config.get("preset", "default")
    return os.path.join("workdirs", config.method + ("" if preset == "default" else f"-{preset}"))


def _run(argv: list[str]) -> str:
    """Parses the command line, checks the config, then runs its task; the line to print."""
    _parse_flags(argv)
    import jax

    from fetalssl_jax.runtime import distributed

    distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    config = _CONFIG.value
    module = task_module(config)
    if jax.process_index() != 0:  # process 0 reports; the others only warn
        logging.getLogger("fetalssl_jax").setLevel(logging.WARNING)
    if config.get("task", "pretrain") != "pretrain" and jax.process_count() > 1:
        raise UsageError(
            f"config.task = {config.task!r} runs in one process (its models are small); launch it without "
            "--coordinator_address / --num_processes / srun tasks, or with --distributed=off"
        )
    return module.run(config, _WORKDIR.value or default_workdir(config))


def _interrupted(error: BaseException | None) -> bool:
    """Whether `error` is a Ctrl-C, or what a library turned one into (asyncio, inside orbax's checkpoint write,
    raises RuntimeError from the KeyboardInterrupt)."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


_CUT_SHORT: list[BaseException] = []  # see main()


def main(argv: list[str]) -> int:
    """Runs one experiment or tool; returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fetalssl_jax").setLevel(logging.INFO)  # ours; orbax and absl stay at WARNING
    try:
        line = _run(argv)
    except UserError as error:  # found before anything was written: one line per problem
        for problem in getattr(error, "problems", None) or [str(error)]:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except RunStopped as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except BaseException as error:  # a second Ctrl-C, or one outside the training steps
        if not _interrupted(error):
            raise
        # Its frames hold what the Ctrl-C cut short (an asyncio loop inside orbax's checkpoint write): freed here,
        # their finalizers print a traceback or an "un-awaited coroutine" warning after the one line below. Kept
        # until run() leaves with os._exit.
        _CUT_SHORT.append(error)
        print("error: interrupted (Ctrl-C); what was completely written is kept: run again to resume", file=sys.stderr)
        return 130
    import jax

    if jax.process_index() == 0:  # process 0 reports
        print(line)
    return 0


def run() -> None:
    """Console-script entry point."""
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # once, before any work: XLA's CPU buffers on huge pages (runtime/hugepages.py)
    status = main(sys.argv)
    loop = sys.modules.get("fetalssl_jax.train.loop")
    if status in (1, 130) or (loop is not None and loop.stopped_by_signal()):
        # A run that failed or stopped on SIGTERM / Ctrl-C has written what it keeps (checkpoints, metrics) before
        # main returned. After a failed or signal-stopped checkpoint write, orbax / tensorstore threads can abort the
        # interpreter's shutdown (SIGABRT, "exception not rethrown", seen in CI and in a SIGTERM test), turning a
        # clear result into a crash: leave without that shutdown. (Several processes: JAX's pre-emption service
        # catches SIGTERM, not this process's handlers, so they keep jax.distributed's orderly shutdown.)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
