"""HTTP: the route tables and their thin handlers, request limits, auth, one error shape, metrics, API docs, bodies."""
