"""Prometheus metrics of the world components (names from the product's seed where it has one).

Counters are exposed with Prometheus's `_total` suffix (e.g. the seed's
`mapleverse_behavior_execution_errors` is scraped as `mapleverse_behavior_execution_errors_total`).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "AGENTS_PER_DISTRICT",
    "AGENT_ANSWERS",
    "AGENT_OBSERVATIONS",
    "BEHAVIOUR_ERRORS",
    "DILATION",
    "HANDOFFS",
    "HANDOFF_LATENCY",
    "REGION_SYNC_LAG",
    "SWARM_AGENT_COUNT",
    "TICK_DURATION",
    "TICK_RATE",
]

_TICK_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.1, 0.25, 0.5, 1, 2.5)

SWARM_AGENT_COUNT = Gauge("mapleverse_swarm_agent_count", "Members of a swarm", ["swarm"])
TICK_DURATION = Histogram(
    "mapleverse_tick_duration_seconds",
    "Seconds a tick took: a district's step (component=district), or the whole tick from its "
    "start to the next one (component=orchestrator)",
    ["world", "component"],
    buckets=_TICK_BUCKETS,
)
REGION_SYNC_LAG = Gauge(
    "mapleverse_region_sync_lag_seconds",
    "Seconds between a region's snapshot and the tick it was taken at",
    ["world", "region"],
)
BEHAVIOUR_ERRORS = Counter(
    "mapleverse_behavior_execution_errors",
    "Entity-steps whose behaviour raised (the entities kept their state)",
    ["world", "district"],
)
HANDOFFS = Counter(
    "mapleverse_handoffs",
    "Entities handed to or taken from a neighbour",
    ["world", "district", "direction"],
)
HANDOFF_LATENCY = Histogram(
    "mapleverse_handoff_latency_seconds",
    "From an offer's first send to its accept",
    ["world", "district"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
AGENTS_PER_DISTRICT = Gauge(
    "mapleverse_agents_per_district", "Entities a district server owns", ["world", "district"]
)
DILATION = Gauge(
    "mapleverse_time_dilation", "Achieved tick rate / target tick rate (1 = on time)", ["world"]
)
TICK_RATE = Gauge("mapleverse_tick_rate", "Achieved ticks per second", ["world"])
AGENT_OBSERVATIONS = Counter(
    "mapleverse_agent_observations", "Observations the scheduler sent to agents", ["world"]
)
AGENT_ANSWERS = Counter(
    "mapleverse_agent_answers",
    "Agents' answers by outcome: answered (applied), late, impossible, malformed",
    ["world", "outcome"],
)
