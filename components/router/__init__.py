"""The event router: batched events in, each to every subscriber whose patterns match, with a
ring buffer to replay from (docs/events.md)."""

from components.router.client import EventClient
from components.router.component import EventRouter
from components.router.ring import Event, InvalidRequest, Rate, Ring, RouterError, Subscriptions
from components.router.settings import RouterSettings

__all__ = [
    "Event",
    "EventClient",
    "EventRouter",
    "InvalidRequest",
    "Rate",
    "Ring",
    "RouterError",
    "RouterSettings",
    "Subscriptions",
]
