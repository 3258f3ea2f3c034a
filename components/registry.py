"""Every component by name: `mapleverse component NAME` runs one of these."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.runtime.component import Component

__all__ = ["COMPONENTS", "DEFAULT_UP", "resolve"]

COMPONENTS: dict[str, str] = {
    "echo": "components.echo:EchoService",
    "health": "components.health:HealthMonitor",
}

# What `mapleverse up` starts around the embedded broker.
DEFAULT_UP: tuple[str, ...] = ("health", "echo")


def resolve(name: str) -> type[Component]:
    """The component class registered under `name`; KeyError names the choices."""
    try:
        target = COMPONENTS[name]
    except KeyError:
        raise KeyError(f"unknown component {name!r}; choose one of {sorted(COMPONENTS)}") from None
    module, _, attr = target.partition(":")
    cls: type[Component] = getattr(importlib.import_module(module), attr)
    return cls
