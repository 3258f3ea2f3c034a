"""Settings of a mesh worker (`MAPLEVERSE_MESH_WORKER_*`, plus the mesh's and the bus's)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from components.mesh_manager.settings import MeshSettings

__all__ = ["MeshWorkerSettings"]


class MeshWorkerSettings(MeshSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    mesh_worker_agents: int = Field(
        default=1, ge=0, le=1000, description="agents this worker hosts (named WORKER-aN)"
    )
    mesh_worker_update_interval: float = Field(
        default=1.0,
        ge=0,
        description="seconds between the state updates of each agent (0: none)",
    )
    mesh_request_timeout: float = Field(
        default=0.5, gt=0, description="seconds before a request to the mesh is sent again"
    )
