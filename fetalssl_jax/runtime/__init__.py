"""Where and how the computation runs: the device mesh and shardings, the compilation cache, TensorFlow kept off
the accelerators, the process's huge-page allocator and the workdir's lock. The bottom layer: it imports nothing of
the package but its error types."""
