"""Where and how the computation runs: the device mesh and shardings, the compilation cache, TensorFlow kept off
the accelerators, and the process's huge-page allocator. The bottom layer: it imports nothing of the package."""
