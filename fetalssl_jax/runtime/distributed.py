"""Starting JAX on several processes (hosts) from the command line, before anything touches a device.

One process per host (per GPU on SLURM, if you like): `jax.distributed.initialize` connects them, after which
`jax.devices()` lists every device of every process and the train step is one program over all of them.
"""

from __future__ import annotations

import logging
import os

import jax

from fetalssl_jax.errors import UserError

log = logging.getLogger("fetalssl_jax")

MODES = ("auto", "on", "off")

# Launchers that say how many processes this job step has; JAX's own cluster detection reads the rest
# (coordinator, process id). A TPU pod or a Kubernetes job says nothing this cheap: use mode 'on' there.
_PROCESS_COUNT_VARIABLES = ("SLURM_STEP_NUM_TASKS", "OMPI_COMM_WORLD_SIZE")


class LaunchError(UserError, ValueError):
    """A multi-process launch whose flags or environment contradict each other or are incomplete."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise LaunchError(f"${name}={value!r} is not an integer") from None


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Starts `jax.distributed` when this is one of several processes; returns whether it did.

    - 'off': never (one process).
    - 'on': always; what is not given (here or in $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID)
      JAX detects itself: SLURM, Cloud TPU pods, Kubernetes (GKE), Open MPI.
    - 'auto': as 'on' if a coordinator, a process count or a process id is given, or if SLURM (srun) or Open MPI
      (mpirun) started more than one process; otherwise one process.

    On CPUs the processes exchange data over gloo (JAX's default CPU collectives).
    """
    if mode not in MODES:
        raise LaunchError(f"--distributed={mode!r}; choose one of {MODES}")
    coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    num_processes = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = any(v is not None for v in (coordinator_address, num_processes, process_id))
    launched = any((_env_int(name) or 1) > 1 for name in _PROCESS_COUNT_VARIABLES)
    if mode == "off" or (mode == "auto" and not (explicit or launched)):
        if mode == "off" and explicit:
            raise LaunchError("--distributed=off contradicts --coordinator_address / --num_processes / --process_id")
        return False
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except (ValueError, TypeError) as error:  # JAX names what is missing; say where it can come from
        raise LaunchError(
            f"could not start JAX on several processes: {error}. Give --coordinator_address=HOST:PORT, "
            "--num_processes and --process_id (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, $JAX_PROCESS_ID), "
            "or launch under SLURM (srun), on a Cloud TPU pod or in a Kubernetes job, which JAX detects."
        ) from error
    log.info("process %d of %d, %d of %d devices here", jax.process_index(), jax.process_count(),
             jax.local_device_count(), jax.device_count())  # fmt: skip
    return True
