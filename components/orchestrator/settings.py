"""Settings of the orchestrator (`MAPLEVERSE_WORLD_*`, plus the world's and the bus's)."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import WorldSettings

__all__ = ["OrchestratorSettings"]


class OrchestratorSettings(WorldSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    world_rate: float = Field(default=20.0, gt=0, le=1000, description="target ticks per second")
    world_dilation_floor: float = Field(
        default=0.1, gt=0, le=1, description="lowest time dilation before ticks go on regardless"
    )
    world_bounds: str = Field(
        default="0,0,1000,1000", description="the world rectangle: x0,y0,x1,y1"
    )
    world_layout: str = Field(
        default="2x2", pattern=r"^\d+x\d+$", description="initial regions: COLSxROWS"
    )
    world_districts: str = Field(
        default="d1,d2", description="district server ids the regions are dealt to, comma-separated"
    )
    world_region_names: str = Field(
        default="", description="names of the initial regions (a city's districts), comma-separated"
    )
    world_snapshot_interval: float = Field(
        default=1.0, gt=0, description="seconds between retained world snapshots"
    )
    world_split_above: int = Field(
        default=0, ge=0, description="split a region holding more entities than this (0: never)"
    )
    world_merge_below: int = Field(
        default=0, ge=0, description="merge two halves holding fewer entities than this together"
    )
    world_paused: bool = Field(default=False, description="start with the clock paused")

    @field_validator("world_bounds")
    @classmethod
    def _four_numbers(cls, value: str) -> str:
        parts = value.split(",")
        try:
            x0, y0, x1, y1 = (float(p) for p in parts)
        except ValueError:
            raise ValueError("four numbers x0,y0,x1,y1") from None
        if not (x1 > x0 and y1 > y0):
            raise ValueError("x1 > x0 and y1 > y0") from None
        return value

    @field_validator("world_districts")
    @classmethod
    def _ids(cls, value: str) -> str:
        ids = [v.strip() for v in value.split(",") if v.strip()]
        if not ids:
            raise ValueError("at least one district server id")
        return ",".join(ids)

    def bounds_tuple(self) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = (float(p) for p in self.world_bounds.split(","))
        return x0, y0, x1, y1

    def district_ids(self) -> list[str]:
        return self.world_districts.split(",")

    def region_names(self) -> list[str]:
        return [v.strip() for v in self.world_region_names.split(",") if v.strip()]
