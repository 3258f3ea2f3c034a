"""A mesh manager: a Raft node of a mesh over MQTT, its log and its fenced state store."""

from components.mesh_manager.component import MeshManager
from components.mesh_manager.settings import MeshManagerSettings, MeshSettings

__all__ = ["MeshManager", "MeshManagerSettings", "MeshSettings"]
