"""Measuring latency honestly: timing in turns, alone in fresh processes, with steady allocators, deadlines and no orphans."""
