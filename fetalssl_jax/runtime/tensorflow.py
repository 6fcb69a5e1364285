"""TensorFlow, imported only where it is needed (TensorBoard summaries, TFDS) and kept off the accelerators."""

from __future__ import annotations


def import_tensorflow():
    """The `tensorflow` module with GPUs hidden from it, so it never takes memory that JAX needs."""
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    return tf
