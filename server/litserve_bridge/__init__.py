"""The one place that reaches into LitServe's internals (litserve 0.2.19, pinned in pyproject).

- `QueueBridge`: LitServe's own routes parse every body as JSON (or a form) before we see it, which
  the Open Inference Protocol's binary bodies are not. LitSpec endpoints solve this by putting a
  payload on the API's request queue themselves and waiting for its answer; this does the same for
  a plain FastAPI route.
- `take_over_route`: removes the route LitServe made for an API, so that a route of ours (which
  reaches the workers through a QueueBridge) answers that path instead.
- `BridgedAPI`, `build_lit_server`: the LitAPI base our inference APIs subclass (so they import no
  LitServe), and the LitServer made of them.
- `run_lit_server`, `workers_ready`, `is_first_api_server`, `quiet_monitor_shutdown`, `managers_die_with_parent`:
  what the rest of the server needs to know from LitServe's processes, or to set for them.
- `drop_gzip`: LitServe always adds GZipMiddleware (level 9). Compressing a 2.8 MB JSON tensor
  answer took 0.8 s of the API server's CPU, 100x the rest of the request; tensors barely compress.
- `GreedyBatchLoop`: how a worker collects and runs a batch (a loop is a public LitAPI argument;
  the queue items and the sentinel it handles are not), its answers sent together.
- `channels.py`: requests and answers travel between API servers and workers over Unix datagram
  socket pairs (LitServe's request queues and transport, swapped in `_init_manager`), not through
  LitServe's queue Manager; what does not fit a datagram still goes the Manager's way.
- `supervise_api_servers`: LitServe forks its API server processes once and never looks at them
  again; one that died (SIGBUS, kill -9) left the shared listening socket open with nobody to
  answer, so clients hung. They are watched, and restarted the way LitServe started them, each on a
  response queue no dead server can still be reading from.
- `supervise_workers`: the main process's watch over the inference workers, in place of LitServe's
  (which polls every 2 s and answers nothing that waits in an API server).

Isolation between models. QueueBridge admits at most one group of a model's requests into the
workers at a time (per API server): later requests for that model wait in the API server and go
together, as one queue item, once the group is answered. A worker takes one queue item per batch,
so a batch holds one model, and a slow or hung model occupies at most one worker per API server
while the others stay free for every other model.
"""

from .batching import GROUP, IDLE_WAKE_SECONDS, RETIRED_EXIT_CODE, GreedyBatchLoop, HeldBatch, HeldRecord, held_record_path
from .channels import current_worker_id
from .lit_server import BridgedAPI, LitServer, build_lit_server, is_first_api_server, managers_die_with_parent, quiet_monitor_shutdown, run_lit_server, workers_ready
from .queue_bridge import QueueBridge, drop_gzip, take_over_route
from .supervision import WorkerDeath, supervise_api_servers, supervise_workers

__all__ = [
    "BridgedAPI",
    "LitServer",
    "build_lit_server",
    "is_first_api_server",
    "managers_die_with_parent",
    "quiet_monitor_shutdown",
    "run_lit_server",
    "workers_ready",
    "GROUP",
    "IDLE_WAKE_SECONDS",
    "RETIRED_EXIT_CODE",
    "GreedyBatchLoop",
    "HeldBatch",
    "HeldRecord",
    "QueueBridge",
    "WorkerDeath",
    "current_worker_id",
    "drop_gzip",
    "held_record_path",
    "supervise_api_servers",
    "supervise_workers",
    "take_over_route",
]
