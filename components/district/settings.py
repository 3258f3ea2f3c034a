"""Settings of a district server (`MAPLEVERSE_DISTRICT_*`, plus the world's and the bus's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import WorldSettings
from store.settings import own_sqlite_url

__all__ = ["DistrictSettings"]


class DistrictSettings(WorldSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    def journal_url(self) -> str:
        """Where this server's journal lives (`district_journal_url`, or its default)."""
        if self.district_journal_url:
            return self.district_journal_url
        return own_sqlite_url(self.store_url, f"district-{self.world}-{self.id}.db")

    district_snapshot_every: int = Field(
        default=30, ge=1, description="ticks between retained region snapshots (and persists)"
    )
    district_persist_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between writes of the whole state (owner changes are journalled "
        "at once)",
    )
    district_journal_url: str = Field(
        default="",
        description="where a district server journals changes of owner (a store URL); empty: "
        "on SQLite a file of its own beside the store's (district-WORLD-ID.db), else the "
        "store URL",
    )
    district_halo: float = Field(
        default=10.0, ge=0, description="distance from a border within which neighbours see"
    )
    district_handoff_retry: float = Field(
        default=0.5, gt=0, description="seconds before an unaccepted hand-off is offered again"
    )
    district_telemetry_max_bytes: int = Field(
        default=1024, ge=64, description="larger telemetry messages are rejected to the DLQ"
    )
    district_idle_interval: float = Field(
        default=0.2,
        gt=0,
        description="seconds between hand-off and control work while the clock is paused",
    )
