"""Model code away from the API servers: the optimization job runner, upload validation, and their confinement."""
