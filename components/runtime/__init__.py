"""What every component shares: the base class, its settings and the process runner."""

from components.runtime.component import Component
from components.runtime.runner import run_component
from components.runtime.settings import ComponentSettings

__all__ = ["Component", "ComponentSettings", "run_component"]
