"""Inference workers: load a variant, forward under a watchdog; protocol adapters, our JSON bodies, tensors in and out, shared memory for large ones."""
