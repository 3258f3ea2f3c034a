"""Bots of a Mafia game played by the worker that hosts them (the game's `host`).

A game started with `host: WORKER` makes its bots that worker's agents. The worker reads the
game's public state (`mesh/{m}/game/{g}/state`) and each of its bots' own view
(`.../player/{bot}`: its role, the mafia's names, the detective's findings), and when a phase
begins it has each living bot decide with `mafia.Bot` and publishes the bot's actions on
`.../act/{bot}`, as a person's client would. The leader judges them by the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from typing import TYPE_CHECKING, Any

from bus import BusError, Subscription
from mafia import Bot
from mesh.payloads import GameAction, GameState, PlayerView

if TYPE_CHECKING:
    from components.mesh_worker.component import MeshWorker

__all__ = ["BotPlayers"]


class BotPlayers:
    """The bots one worker plays, in every game that names it as their host."""

    def __init__(self, worker: MeshWorker) -> None:
        self.worker = worker
        self.states: dict[str, GameState] = {}
        self.views: dict[tuple[str, str], PlayerView] = {}
        self.bots: dict[tuple[str, str], Bot] = {}
        self.actions = 0
        """Actions published (for tests)."""

    async def follow(self, states: Subscription, views: Subscription) -> None:
        """Both streams: each message may be the moment a bot can act."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._states(states))
            tg.create_task(self._views(views))

    async def _states(self, sub: Subscription) -> None:
        async for msg in sub:
            state: GameState = msg.payload
            if state.host != self.worker.id:
                continue
            self.states[state.game] = state
            for bot in state.bots:
                await self._maybe_act(state.game, bot)

    async def _views(self, sub: Subscription) -> None:
        async for msg in sub:
            view: PlayerView = msg.payload
            game = msg.params["game"]
            state = self.states.get(game)
            if state is None or view.player not in state.bots:
                continue
            self.views[(game, view.player)] = view
            await self._maybe_act(game, view.player)

    async def _maybe_act(self, game: str, name: str) -> None:
        state, view = self.states.get(game), self.views.get((game, name))
        if state is None or view is None or view.role is None:
            return  # its role is not known yet: the next message may bring it
        if state.phase not in ("day", "night") or name not in state.alive:
            return
        bot = self.bots.get((game, name))
        if bot is None:
            bot = self.bots[(game, name)] = Bot(name, zlib.crc32(f"{game}:{name}".encode()))
        for event in view.private:  # its role and findings (learning one twice is harmless)
            bot.observe(event)
        seen: dict[str, Any] = {
            "phase": state.phase,
            "round": state.round,
            "alive": state.alive,
            "role": view.role,
            "team": view.team,
            "votes": state.votes,
        }
        act = self.worker.topics["mafia.act"].build(mesh=self.worker.mesh, game=game, agent=name)
        for command in bot.decide(seen):
            action = GameAction(
                op=command["op"], target=command.get("target"), text=command.get("text")
            )
            with contextlib.suppress(BusError):
                await self.worker.bus.publish(act, action)
                self.actions += 1
