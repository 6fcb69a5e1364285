"""Command line: `python -m fetalssl_jax.main --config configs/barlow_twins.py[:preset] [--config.key=value ...]`.

The config file decides everything (big_vision style), including what runs (`config.task`): pretraining
(configs/barlow_twins.py ...), a plane classifier (configs/classify.py), the paper's grid (configs/paper_grid.py), and
the tools: embed, predict, select (configs/embed.py, predict.py, select.py: your own scans), gradcam, tsne, export.
`--workdir` is where checkpoints, metrics, TensorBoard logs, exported weights and results land. Running the same
command again resumes a training run. Launched as several processes (srun, a TPU pod, `--coordinator_address` /
`--num_processes` / `--process_id`), pretraining runs on every device of every process
(fetalssl_jax/runtime/distributed.py).
"""

from __future__ import annotations

import logging
import os
import sys

from absl import flags
from ml_collections import config_flags

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


# The tools: task -> (module, function(config, workdir) -> the line to print)
TOOLS = {
    "embed": ("fetalssl_jax.apply.tasks", "run_embed"),
    "predict": ("fetalssl_jax.apply.tasks", "run_predict"),
    "select": ("fetalssl_jax.apply.tasks", "run_select"),
    "gradcam": ("fetalssl_jax.downstream.gradcam", "run_gradcam"),
    "tsne": ("fetalssl_jax.downstream.embedding", "run_tsne"),
    "export": ("fetalssl_jax.downstream.export", "run_export"),
}


class UsageError(Exception):
    """A mistake in the command line or config that the user must fix."""


def _parse_flags(argv: list[str]) -> list[str]:
    """Parses flags, turning ml_collections' bare KeyError/AttributeError on a typo into a message naming the key."""
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError, flags.Error) as error:
        config_path = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
        if config_path is None and "--config" in argv:
            config_path = argv[argv.index("--config") + 1]
        messages = []
        if config_path:
            from fetalssl_jax.config_lib import load_config, unknown_override_keys

            messages = unknown_override_keys(load_config(config_path), argv)
        raise UsageError("; ".join(messages) or str(error)) from None


def default_workdir(config) -> str:
    """workdirs/<method>, with the preset's name when it is not the default."""
    preset = config.get("preset", "default")
    return os.path.join("workdirs", config.method + ("" if preset == "default" else f"-{preset}"))


def main(argv: list[str]) -> int:
    """Runs one experiment or tool (by `config.task`); returns the exit status."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("fetalssl_jax").setLevel(logging.INFO)  # ours; orbax and absl stay at WARNING
    try:
        _parse_flags(argv)
        if _CONFIG.value is None:
            raise UsageError("--config is required, e.g. --config configs/barlow_twins.py")
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    import jax

    from fetalssl_jax.runtime import distributed

    try:
        distributed.initialize(_DISTRIBUTED.value, _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    is_main = jax.process_index() == 0
    if not is_main:  # process 0 reports; the others only warn
        logging.getLogger("fetalssl_jax").setLevel(logging.WARNING)
    say = print if is_main else lambda *args, **kwargs: None

    from fetalssl_jax.config_lib import ConfigError
    from fetalssl_jax.errors import RunStopped, UserError

    config = _CONFIG.value
    workdir = _WORKDIR.value or default_workdir(config)
    task = config.get("task", "pretrain")
    try:
        if task != "pretrain" and jax.process_count() > 1:
            raise ValueError(
                f"config.task={task!r} runs in one process (its models are small); launch it without "
                "--coordinator_address / --num_processes / srun tasks, or with --distributed=off"
            )
        if task == "pretrain":
            from fetalssl_jax.train.loop import train

            result = train(config, workdir)
            say(f"{result.status} at step {result.step}; workdir: {os.path.abspath(workdir)}")
        elif task == "classify":
            from fetalssl_jax.downstream.classification import run_classification

            results = run_classification(config, workdir)
            if not results:  # stopped by SIGTERM or Ctrl-C, checkpointed
                say(f"preempted; run again to resume; workdir: {os.path.abspath(workdir)}")
                return 0
            test = results["test"]
            say(
                f"test: macro-F1 {test['macro_f1']:.3f}, balanced accuracy {test['balanced_accuracy']:.3f}, "
                f"accuracy {test['accuracy']:.3f} (selected at step {results['best_step']}); "
                f"workdir: {os.path.abspath(workdir)}"
            )
        elif task == "grid":
            from fetalssl_jax.downstream.grid import run_grid

            run_grid(config, workdir)
            say(f"grid finished; results.csv, results.md and the plot in {os.path.abspath(workdir)}")
        elif task in TOOLS:
            import importlib

            module, function = TOOLS[task]
            say(getattr(importlib.import_module(module), function)(config, workdir))
        else:
            raise ValueError(f"config.task={task!r}; choose one of {['pretrain', 'classify', 'grid', *TOOLS]}")
    except ConfigError as error:  # a usage error, found before anything was written: one line per problem
        for problem in error.problems:
            print(f"error: {problem}", file=sys.stderr)
        return 2
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    # OSError: a missing file, an unwritable or full workdir
    except (RunStopped, OSError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C, or one outside the training steps
        print("error: interrupted (Ctrl-C); what was completely written is kept: run again to resume", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # once, before any work: XLA's CPU buffers on huge pages (runtime/hugepages.py)
    status = main(sys.argv)
    if status in (1, 130):
        # A run that failed has written what it keeps (checkpoints, metrics) before main returned. After a failed
        # checkpoint write, orbax / tensorstore threads can abort the interpreter's shutdown (SIGABRT, "exception
        # not rethrown", seen in CI), turning a clear error into a crash: leave without that shutdown.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
