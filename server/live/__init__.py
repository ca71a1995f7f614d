"""Live traffic: routing policies and the guard, the observer that compares variants, the window that sums it up, and the channel that records it."""
