"""The contract between the server and its clients, imported by both: the management API's bodies and
the model records (models.py), routing policies and guards (routing.py), live records (live.py), the
optimization report's model (report.py) and its tolerance (tolerance.py), with the statistics their
bounds are defined by (confidence.py) and the report's Pareto front (pareto.py).

Bodies a client sends are strict (unknown fields refused); a client reads the server's answers with
extra fields allowed (clients/models.py, read_answer), so an older client keeps working."""
