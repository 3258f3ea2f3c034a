"""The orchestrator: a world's clock (with time dilation), its region map and control service."""

from components.orchestrator.clock import Clock
from components.orchestrator.component import Orchestrator
from components.orchestrator.regions import RegionError, drain, rebalance
from components.orchestrator.settings import OrchestratorSettings

__all__ = ["Clock", "Orchestrator", "OrchestratorSettings", "RegionError", "drain", "rebalance"]
