"""The largest values a user's config may ask for, in one place so the README can quote them.

Every number arrives from an upload and ends up deciding how long a job runs or how much memory it
takes; none may be unbounded (an `epochs` of 1e9 once blocked the queue). The maxima sit well above
every value the tests and benchmarks use.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

MAX_EPOCHS = 1_000
MAX_STEPS = 1_000_000
MAX_BATCH_SIZE = 4_096
MAX_LEARNING_RATE = 10.0
MAX_LAYERS_KEPT_IN_FLOAT = 1_000  # skip_sensitive: more than any model here has layers
MAX_PLAN_STEPS = 20
MAX_PLANS = 100  # explicit candidates, or a search's `first` plans
MAX_SEARCH_PLANS = 10_000  # plans a search space may expand to
MAX_TRIALS = 10_000
MAX_TIME_BUDGET_S = 24 * 3600.0
MAX_TIMING_SECONDS = 600.0
MAX_SPEEDUP = 1_000.0

# torch.Generator.manual_seed and random.Random both take this range.
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]
