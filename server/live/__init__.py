"""Live traffic: routing policies and the guard, the observer that compares variants, and the window that sums it up."""
