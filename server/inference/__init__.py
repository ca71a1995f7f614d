"""Inference workers: load a variant, forward under a watchdog, tensors in and out, shared memory for large ones."""
