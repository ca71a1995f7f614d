"""The search over plans: its space, first plans, compound plans (prune, reconstruct, distil, int8), and the runner within the budget."""
