"""The agent scheduler: observations at each agent's cadence, answers checked and applied."""

from components.scheduler.agents import ACTIONS, AgentRecord, check
from components.scheduler.component import AgentScheduler
from components.scheduler.hosted import HOSTED, Greeter, HostedAgent, Wanderer
from components.scheduler.settings import SchedulerSettings
from components.scheduler.view import WorldView

__all__ = [
    "ACTIONS",
    "AgentRecord",
    "AgentScheduler",
    "Greeter",
    "HOSTED",
    "HostedAgent",
    "SchedulerSettings",
    "Wanderer",
    "WorldView",
    "check",
]
