"""Pruning: unstructured (magnitude) and structured (channel groups, with reconstruction)."""
