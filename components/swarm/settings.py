"""Settings of the swarm coordinator (`MAPLEVERSE_SWARM_*`, plus the world's and the bus's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import WorldSettings

__all__ = ["SwarmSettings"]


class SwarmSettings(WorldSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    swarm_spawn_chunk: int = Field(
        default=500, ge=1, le=10_000, description="members per spawn message to a district"
    )
    swarm_status_interval: float = Field(
        default=1.0, gt=0, description="seconds between retained swarm status updates"
    )
    swarm_initial: str = Field(
        default="",
        pattern=r"^([a-z0-9_-]+:[a-z0-9_-]+:\d+(,[a-z0-9_-]+:[a-z0-9_-]+:\d+)*)?$",
        description="swarms to create on first start, NAME:BEHAVIOUR:SIZE comma-separated",
    )
    swarm_scale_timeout: float = Field(
        default=120.0, gt=0, description="seconds a scale may take before it is reported failed"
    )
