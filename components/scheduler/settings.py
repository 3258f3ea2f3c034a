"""Settings of the agent scheduler (`MAPLEVERSE_SCHEDULER_*`, plus the world's and the bus's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import WorldSettings

__all__ = ["SchedulerSettings"]


class SchedulerSettings(WorldSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    scheduler_cadence: int = Field(
        default=10, ge=1, le=100_000, description="ticks between two observations of an agent"
    )
    scheduler_deadline: float = Field(
        default=1.0, gt=0, le=600, description="seconds an agent has to answer an observation"
    )
    scheduler_sight: float = Field(
        default=30.0, gt=0, description="how far an agent sees (world units)"
    )
    scheduler_visible_max: int = Field(
        default=20, ge=0, le=1000, description="most entities listed in one observation"
    )
    scheduler_max_speed: float = Field(
        default=5.0, gt=0, description="fastest move an agent may ask for (units per second)"
    )
    scheduler_hosted: str = Field(
        default="",
        description="hosted agents to run, KIND:COUNT comma-separated (e.g. wanderer:3,greeter:2)",
    )
