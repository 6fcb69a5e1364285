"""The steady-state training loop reads the device only at the steps it records, and still checks every step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config
from jax._src.array import ArrayImpl

from fetalssl_jax.train import loop
from fetalssl_jax.train.checkpoint import Checkpointer
from fetalssl_jax.train.health import NonFiniteLossError
from fetalssl_jax.train.monitor import Monitor, read_metrics


@pytest.fixture
def cpu_transfer_guard(monkeypatch):
    """jax's device-to-host transfer guard, made to hold on the CPU backend too (where an array's host copy is the
    buffer itself and the runtime never consults the guard): every read of an array's value raises while the
    guard's current level is 'disallow', as a GPU or TPU runtime would."""

    def guarded(read):
        def wrapper(self, *args):
            if jax.config.jax_transfer_guard_device_to_host == "disallow":
                raise RuntimeError(f"disallowed device-to-host transfer of {self.aval}")
            return read(self, *args)

        return wrapper

    monkeypatch.setattr(ArrayImpl, "_value", property(guarded(ArrayImpl._value.fget)))
    monkeypatch.setattr(ArrayImpl, "copy_to_host_async", guarded(ArrayImpl.copy_to_host_async))


def _steady_state(workdir, monkeypatch, **overrides):
    """(run, recorder, fetch count, start) for `_train_steps` on the tiny config; the checkpoint written at the end
    (not a step) may read the state."""
    config = tiny_config(**{"eval.compare_random_init": False, "eval.every_steps": 0, **overrides})
    run = loop._open_run(config, workdir)
    state, start_variables = loop._start_state(run)
    monitor = Monitor(run.workdir, 0, run.total_steps, config.batch_size, config.log_every_steps, True, False)
    fetches = []
    real_fetch = loop.fetch
    monkeypatch.setattr(loop, "fetch", lambda tree: fetches.append(len(fetches)) or real_fetch(tree))
    save = run.checkpointer.save

    def save_allowed(state):
        with jax.transfer_guard_device_to_host("allow"):
            return save(state)

    monkeypatch.setattr(run.checkpointer, "save", save_allowed)
    return run, state, start_variables["params"], loop._Recorder(run, monitor), monitor, fetches


def test_only_the_recorded_steps_are_read_from_the_device(tmp_path, monkeypatch, cpu_transfer_guard):
    run, state, start_params, recorder, monitor, fetches = _steady_state(
        tmp_path, monkeypatch, num_steps=8, log_every_steps=3, checkpoint_every_steps=100
    )
    assert recorder.health_check_step == 8
    with jax.transfer_guard_device_to_host("disallow"):
        with pytest.raises(RuntimeError, match="disallowed device-to-host transfer"):
            float(state.step)  # the guard holds here: any read but `loop.fetch` fails the run below
        state, status = loop._train_steps(run, state, 0, start_params, recorder, None, None)
    monitor.close()
    assert status == "finished"
    records = read_metrics(tmp_path)
    # log steps 0, 3, 6 and the last step 7 (the health check's too): one read each, nothing else
    assert [r["step"] for r in records] == [0, 3, 6, 7]
    assert len(fetches) == 4
    # loss_mean is the mean over the steps since the previous record: compare with a run that records every step
    every = tmp_path / "every"
    config = tiny_config(num_steps=8, log_every_steps=1, checkpoint_every_steps=100, **{"eval.compare_random_init":
                                                                                         False})  # fmt: skip
    loop.train(config, every)
    losses = [r["loss"] for r in read_metrics(every)]
    assert [r["loss"] for r in records] == [losses[s] for s in (0, 3, 6, 7)]
    for record, (lo, hi) in zip(records, [(0, 1), (1, 4), (4, 7), (7, 8)], strict=True):
        assert record["loss_mean"] == pytest.approx(np.mean(losses[lo:hi], dtype=np.float64), rel=1e-5)


def test_a_non_finite_step_that_is_not_recorded_still_stops_the_run_before_a_checkpoint(tmp_path, monkeypatch):
    make_step = loop.make_train_step

    def poisoned(*args):  # the loss of step 4 (0-based) is NaN, made on the device
        step_fn = make_step(*args)

        def step(state, batch):
            state, metrics = step_fn(state, batch)
            return state, {**metrics, "loss": jnp.where(state.step == 5, jnp.nan, metrics["loss"])}

        return step

    monkeypatch.setattr(loop, "make_train_step", poisoned)
    # read at step 0 (log) and at the checkpoints after steps 2 and 5: step 4 is never read on its own
    config = tiny_config(num_steps=12, log_every_steps=100, checkpoint_every_steps=3,
                         **{"eval.compare_random_init": False})  # fmt: skip
    with pytest.raises(NonFiniteLossError, match=r"loss nan / gradient norm \S+ at step 4: .*checkpoint \(step 3\)"):
        loop.train(config, tmp_path)
    assert Checkpointer(tmp_path, {}).latest_step() == 3  # the checkpoint after step 5 was never written
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2]
