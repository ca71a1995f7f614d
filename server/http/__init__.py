"""HTTP: the route tables and their thin handlers (management, OIP v2, /predict and /compare), request limits, auth, API docs."""
