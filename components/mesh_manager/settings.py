"""Settings of a mesh manager (`MAPLEVERSE_MESH_*`, plus the component's and the bus's)."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from components.runtime.settings import ComponentSettings
from store.settings import DEFAULT_STORE_URL, own_sqlite_url

__all__ = ["MeshSettings", "MeshManagerSettings"]

_ID = re.compile(r"^[a-z0-9_-]+$")


class MeshSettings(ComponentSettings):
    """What every member of a mesh (manager or worker) is told: which mesh, how fast it beats."""

    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    mesh: str = Field(default="main", pattern=r"^[a-z0-9_-]+$", description="the mesh's id")
    mesh_heartbeat: float = Field(
        default=0.1,
        gt=0,
        le=10,
        description="seconds between the leader's heartbeats (AppendEntries) and the workers'",
    )


class MeshManagerSettings(MeshSettings):
    model_config = SettingsConfigDict(env_prefix="MAPLEVERSE_", frozen=True, extra="ignore")

    mesh_managers: str = Field(
        default="m1,m2,m3",
        description="the ids of every manager of the mesh, comma-separated (3 or more, odd)",
    )
    mesh_election_min: float = Field(
        default=0.25, gt=0, description="shortest randomised election timeout, seconds"
    )
    mesh_election_max: float = Field(
        default=0.45, gt=0, description="longest randomised election timeout, seconds"
    )
    mesh_worker_misses: int = Field(
        default=3, ge=1, description="heartbeats a worker may miss before it is marked failed"
    )
    mesh_worker_grace: float = Field(
        default=2.0, ge=0, description="seconds a failed worker is kept before it is removed"
    )
    mesh_status_interval: float = Field(
        default=1.0, gt=0, description="seconds between the leader's retained status updates"
    )
    mesh_snapshot_every: int = Field(
        default=1000,
        ge=1,
        description="applied entries between snapshots of a manager's state (a restart "
        "resumes from its last one)",
    )
    store_url: str = Field(
        default=DEFAULT_STORE_URL,
        description="sqlite+aiosqlite:///PATH or postgresql+psycopg://USER:PASS@HOST/DB",
    )

    mesh_log_url: str = Field(
        default="",
        description="where this manager keeps its Raft log (a store URL); empty: on SQLite a "
        "file of its own beside the store's (mesh-MESH-ID.db: SQLite has one writer at a time, "
        "and managers sharing a file would wait on each other), else the store URL",
    )

    @field_validator("mesh_managers")
    @classmethod
    def _manager_ids(cls, value: str) -> str:
        ids = [v.strip() for v in value.split(",") if v.strip()]
        bad = [i for i in ids if not _ID.match(i)]
        if bad:
            raise ValueError(f"ids of [a-z0-9_-], not {bad}")
        if len(set(ids)) < 3:
            raise ValueError("at least three distinct manager ids (Raft needs a majority)")
        return ",".join(ids)

    @model_validator(mode="after")
    def _consistent(self) -> MeshManagerSettings:
        if self.id not in self.manager_ids():
            raise ValueError(
                f"this manager's id {self.id!r} (MAPLEVERSE_ID) is not one of "
                f"MAPLEVERSE_MESH_MANAGERS {self.mesh_managers!r}"
            )
        if not self.mesh_heartbeat < self.mesh_election_min < self.mesh_election_max:
            raise ValueError(
                "need MAPLEVERSE_MESH_HEARTBEAT < MAPLEVERSE_MESH_ELECTION_MIN < "
                f"MAPLEVERSE_MESH_ELECTION_MAX, got {self.mesh_heartbeat}, "
                f"{self.mesh_election_min}, {self.mesh_election_max}"
            )
        return self

    def manager_ids(self) -> list[str]:
        return self.mesh_managers.split(",")

    def log_url(self) -> str:
        """Where this manager's Raft log lives (`mesh_log_url`, or its default)."""
        if self.mesh_log_url:
            return self.mesh_log_url
        return own_sqlite_url(self.store_url, f"mesh-{self.mesh}-{self.id}.db")
