"""Build-time code of the TFDS builders in `data_builders/`: format readers and Beam-or-local generation. Not
imported by training, which reads the built datasets (`fetalssl_jax.data.tfds_source`)."""
