"""Run one component as its own process: uvloop, settings from the environment, SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from bus.settings import SettingsError, load_settings
from components.registry import resolve

__all__ = ["run_component"]


def run_component(name: str) -> int:
    """Run component `name` until SIGTERM/SIGINT; returns the process exit code."""
    try:
        cls = resolve(name)
    except KeyError as exc:
        print(f"mapleverse: {exc.args[0]}", file=sys.stderr)
        return 2
    try:
        settings = load_settings(cls.settings_model)
    except SettingsError as exc:
        for problem in exc.problems:
            print(f"mapleverse component {name}: {problem}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s {name}/{settings.id} %(name)s: %(message)s",
    )

    async def main() -> None:
        component = cls(settings)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, component.stop)
        await component.run()

    try:
        import uvloop

        uvloop.run(main())
    except KeyboardInterrupt:
        pass
    return 0
