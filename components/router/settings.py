"""Settings of the event router: every component setting plus `MAPLEVERSE_EVENTS_*`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import ComponentSettings

__all__ = ["RouterSettings"]


class RouterSettings(ComponentSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    events_ring_size: int = Field(
        default=100_000,
        ge=1,
        le=50_000_000,
        description="events the ring buffer holds for replay (the oldest fall out)",
    )
    events_replay_limit: int = Field(
        default=10_000,
        ge=1,
        description="events one replay reply carries at most (fewer when the packet limit says so)",
    )
    events_max_subscribers: int = Field(
        default=10_000, ge=1, description="subscribers the router holds at most"
    )
    events_max_patterns: int = Field(
        default=256, ge=1, description="patterns one subscriber holds at most"
    )
    events_route_cache: int = Field(
        default=4096,
        ge=1,
        description="distinct event topics whose matching subscribers are remembered",
    )
    events_flush_delay: float = Field(
        default=0.005,
        gt=0,
        le=1,
        description="seconds a few events wait for more before their delivery batch goes out",
    )
    events_max_backlog: int = Field(
        default=8,
        ge=1,
        description="delivery batches waiting for the bus before the router stops reading input",
    )
    events_rate_window: float = Field(
        default=10.0, gt=0, description="seconds over which stats computes events per second"
    )
