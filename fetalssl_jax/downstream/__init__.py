"""Downstream: plane classification, the experiment grid, Grad-CAM, t-SNE and weight export."""
