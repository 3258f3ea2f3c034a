"""Custom behaviours from plugins: `MAPLEVERSE_BEHAVIOUR_PLUGINS=package.module:register,...`.

Each entry names a function that takes the `BehaviourRegistry` and registers behaviours in it:

    def register(registry: BehaviourRegistry) -> None:
        registry.register(Behaviour(id="orbit", action=orbit))

District servers step swarms with them; the swarm coordinator accepts them as a swarm's
behaviour. Give every district server and the coordinator the same plugins.
"""

from __future__ import annotations

import importlib

from world.behaviours import BehaviourRegistry, default_registry

__all__ = ["PluginError", "load_registry"]


class PluginError(ValueError):
    """A plugin that cannot be loaded, with the entry and the reason."""


def load_registry(plugins: str) -> BehaviourRegistry:
    """The built-in behaviours plus those the comma-separated `module:function` plugins add."""
    registry = default_registry()
    for entry in filter(None, (p.strip() for p in plugins.split(","))):
        module_name, sep, attr = entry.partition(":")
        if not sep or not module_name or not attr:
            raise PluginError(f"MAPLEVERSE_BEHAVIOUR_PLUGINS: {entry!r} is not module:function")
        try:
            register = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"MAPLEVERSE_BEHAVIOUR_PLUGINS: {entry!r}: {exc}") from exc
        try:
            register(registry)
        except Exception as exc:  # a plugin's own bug: say whose
            raise PluginError(f"MAPLEVERSE_BEHAVIOUR_PLUGINS: {entry!r} failed: {exc}") from exc
    return registry
