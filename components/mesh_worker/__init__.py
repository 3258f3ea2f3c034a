"""A mesh worker: hosts agents whose state the mesh replicates; beats to every manager."""

from components.mesh_worker.client import MeshClient, MeshRequestError
from components.mesh_worker.component import MeshWorker
from components.mesh_worker.settings import MeshWorkerSettings

__all__ = ["MeshClient", "MeshRequestError", "MeshWorker", "MeshWorkerSettings"]
