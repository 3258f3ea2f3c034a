"""The health monitor component."""

from components.health.component import HealthMonitor
from components.health.settings import HealthSettings
from components.health.table import HealthTable

__all__ = ["HealthMonitor", "HealthSettings", "HealthTable"]
