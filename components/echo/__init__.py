"""The echo service component."""

from components.echo.component import EchoService

__all__ = ["EchoService"]
