"""Prometheus metrics of the bus, labelled by client id."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUBLISHED = Counter("mapleverse_bus_published", "Messages published", ["client"])
RECEIVED = Counter("mapleverse_bus_received", "Messages received", ["client"])
REJECTED = Counter(
    "mapleverse_bus_rejected", "Payloads that failed to decode or validate", ["client"]
)
DEAD_LETTERED = Counter(
    "mapleverse_bus_dead_lettered", "Rejected payloads sent to the DLQ", ["client"]
)
RECONNECTS = Counter("mapleverse_bus_reconnects", "Connections re-established", ["client"])
QUEUE_DEPTH = Gauge("mapleverse_bus_queue_depth", "Incoming messages waiting", ["client"])
INFLIGHT = Gauge("mapleverse_bus_inflight", "QoS 1 publishes awaiting acknowledgement", ["client"])
PUBLISH_LATENCY = Histogram(
    "mapleverse_bus_publish_latency_seconds",
    "QoS 1 publish to broker acknowledgement",
    ["client"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1, 5),
)


class ClientMetrics:
    """The labelled children for one client, resolved once (labels() is not free)."""

    def __init__(self, client: str) -> None:
        self.published = PUBLISHED.labels(client)
        self.received = RECEIVED.labels(client)
        self.rejected = REJECTED.labels(client)
        self.dead_lettered = DEAD_LETTERED.labels(client)
        self.reconnects = RECONNECTS.labels(client)
        self.queue_depth = QUEUE_DEPTH.labels(client)
        self.inflight = INFLIGHT.labels(client)
        self.publish_latency = PUBLISH_LATENCY.labels(client)
