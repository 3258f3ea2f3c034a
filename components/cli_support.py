"""What the operation commands (`operations.py`, `mesh_operations.py`) share: the error they
stop on, their common options, and running one over a bus of its own."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable

from bus import Bus, BusSettings

__all__ = ["OperationFailed", "common_options", "run_operation"]


class OperationFailed(Exception):
    """The service refused, answered with an error, or did not answer."""


def common_options(scope: str, what: str, timeout: float, wait_for: str) -> argparse.ArgumentParser:
    """`--SCOPE` (default main), `--timeout` and `--json`, for every leaf command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(f"--{scope}", default="main", help=f"which {what} (default main)")
    common.add_argument(
        "--timeout",
        type=float,
        default=timeout,
        help=f"seconds to wait for {wait_for} (default {timeout:g})",
    )
    common.add_argument("--json", action="store_true", help="print the raw result as JSON")
    return common


async def run_operation(
    args: argparse.Namespace,
    settings: BusSettings,
    handler: Callable[[Bus, argparse.Namespace], Awaitable[None]],
) -> int:
    """Run `handler` on a CLI bus; a failed operation is one line on stderr and exit code 1."""
    try:
        async with Bus(settings, kind="cli") as bus:
            await handler(bus, args)
    except OperationFailed as exc:
        print(f"mapleverse {args.command} {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0
