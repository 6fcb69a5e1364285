"""One JAX process of the multi-process test (see test_tfds_pipeline.py): tiny Barlow Twins from a built TFDS
dataset for a few steps, on a mesh over every process's CPU device, with gloo collectives.

  python multiprocess_check.py DATA_DIR NAME STEPS OUT.json [PROCESS_ID NUM_PROCESSES PORT]

Writes the losses of process 0 (every process computes the same global loss) and this process's record
indices per step.
"""

import json
import os
import sys

import jax

if len(sys.argv) > 5:
    process_id, num_processes, port = (int(a) for a in sys.argv[5:8])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}", num_processes=num_processes, process_id=process_id,
        initialization_timeout=120,
    )  # fmt: skip

import pathlib  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from conftest import tiny_config  # noqa: E402

from fetalssl_jax.data import sources  # noqa: E402
from fetalssl_jax.data.pipeline import device_batches  # noqa: E402
from fetalssl_jax.methods import get_method  # noqa: E402
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh  # noqa: E402
from fetalssl_jax.train.loop import make_sampler  # noqa: E402
from fetalssl_jax.train.optim import make_optimizer  # noqa: E402
from fetalssl_jax.train.step import init_state, make_train_step  # noqa: E402

if __name__ == "__main__":
    data_dir, name, steps, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    config = tiny_config(**{"data.source": "tfds", "data.name": name, "data.data_dir": data_dir,
                            "data.max_gap": 2, "batch_size": 16, "compilation_cache_dir": ""})  # fmt: skip
    method = get_method(config.method)(config, 100)
    assert method.example_mode(config) == "pairs"
    dataset = sources.pretraining_frames(config, method.example_mode(config))
    sampler = make_sampler(config, method, dataset, jax.process_index(), jax.process_count())
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, 100)
    mesh = make_mesh()
    sharding = batch_sharding(mesh)
    batches = device_batches(sampler, 0, sharding, prefetch=2)
    first = next(batches)
    state = init_state(method, optimizer, config.seed, first["frames"], mesh)
    step_fn = make_train_step(method, optimizer, mesh)
    losses, batch = [], first
    for step in range(steps):
        state, metrics = step_fn(state, batch)
        losses.append(float(metrics["loss"]))
        if step + 1 < steps:
            batch = next(batches)
    batches.close()
    result = {
        "losses": losses,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "local_batch": sampler.local_batch,
        "indices": [sampler.indices(s).tolist() for s in range(steps)],
    }
    pathlib.Path(out).write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        # Nobody leaves while a peer may still need the coordinator (process 0 hosts it).
        multihost_utils.sync_global_devices("results written")
    # Skip interpreter teardown: gloo's and TensorFlow's background threads occasionally abort an otherwise finished
    # process at exit ("terminate called ..."), after the results above were written.
    os._exit(0)
