"""The Mafia game on a mesh: the game's state lives in the replicated log, the leader runs it.

Every command of a game (start, say, vote, kill, protect, inspect, advance) is a log entry
`{"op": "game", "game": ID, "command": {...}}`; each manager applies it with `mafia.Game`, so
every manager holds the same game, and a new leader after a failover carries on from it.

The leader is the game master:

* it takes players' actions on `mesh/{m}/game/{g}/act/{agent}` (the broker lets only `agent`
  publish there, so nobody acts as someone else) and proposes them; an action the rules refuse
  is answered on the player's own retained topic and changes nothing;
* it publishes the public events on `.../events`, the public state on `.../state` (retained)
  and each player's secret view (its role, the detective's findings, its last reply) on
  `.../player/{agent}` (retained, readable by that agent alone);
* it ends a phase when everyone who must act has acted or its timer runs out;
* it plays the bots, which go through the same rules as anyone, unless the game names a
  worker to host them (`host`): then they are that worker's agents, and it plays them
  (`components.mesh_worker.players`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from bus import BusError, Message, Subscription
from mafia import NAMES, Applied, Bot, Event, Game, Kind, Phase, tell
from mafia import Role as MafiaRole
from mesh import Role
from mesh.payloads import GameEvent, GameState, PlayerView

if TYPE_CHECKING:
    from components.mesh_manager.component import MeshManager

__all__ = ["GameMaster", "mafia_rules"]

ACTIONS = ("say", "vote", "kill", "protect", "inspect")


def mafia_rules(
    state: dict[str, Any] | None, command: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Apply one game command to a game's state (None: no game yet); deterministic."""
    inner = command.get("command")
    if not isinstance(inner, Mapping):
        return None, {"ok": False, "error": "a game command needs a 'command' object"}
    if state is None and inner.get("op") != "start":
        return None, {"ok": False, "error": f"no game {command.get('game')!r}"}
    game = Game() if state is None else Game.from_dict(state["rules"])
    outcome = game.apply(inner)
    if not isinstance(outcome, Applied):
        return None, {"ok": False, "error": outcome.reason}
    bots = list(command.get("bots", [])) if state is None else list(state["bots"])
    phase_at = None if state is None else state.get("phase_at")
    if any(e.kind in (Kind.STARTED, Kind.PHASE) for e in outcome.events):
        phase_at = command.get("at")  # the leader's clock, in the log: it survives a failover
    host = command.get("host") if state is None else state.get("host")
    new = {"rules": game.to_dict(), "bots": bots, "host": host, "phase_at": phase_at}
    return new, {"ok": True, "events": [e.to_dict() for e in outcome.events]}


def _acted(game: Game, player: str) -> bool:
    """Whether `player` did what its role does in this phase (so a bot acts once, whoever
    leads)."""
    if game.phase is Phase.DAY:
        return player in game.votes
    role = game.roles.get(player)
    if role is MafiaRole.MAFIA:
        return player in game.kills
    if role is MafiaRole.DOCTOR:
        return game.protected is not None
    if role is MafiaRole.DETECTIVE:
        return game.inspected is not None
    return True  # a villager has nothing to do at night


class GameMaster:
    """The games of one manager's mesh; acts while that manager leads."""

    def __init__(self, manager: MeshManager) -> None:
        self.manager = manager
        self.mesh = manager.mesh
        self.topics = manager.topics
        self._phase_started: dict[tuple[str, str, int], float] = {}
        self._bots_done: set[tuple[str, str, int]] = set()
        self._bots: dict[str, dict[str, Bot]] = {}
        self._advancing: set[tuple[str, str, int]] = set()
        self._seen: dict[str, int] = {}  # game -> the last event seq its bots observed
        self._games: dict[str, tuple[Mapping[str, Any], Game]] = {}  # game -> (state, its Game)
        self.wake = asyncio.Event()

    @property
    def playing(self) -> list[str]:
        """The games whose bots this leader plays."""
        return sorted(self._bots)

    def reset(self) -> None:
        """Leadership changed: timers, bots and what they saw are rebuilt from the log."""
        self._phase_started.clear()
        self._bots_done.clear()
        self._bots.clear()
        self._seen.clear()
        self._advancing.clear()

    def game(self, game_id: str, state: Mapping[str, Any]) -> Game:
        """The `Game` at `state` (a game's entry in the replicated state), built from its dict
        once: every applied command replaces the entry, so the same entry is the same game.
        Read it only; changes go through the log."""
        cached = self._games.get(game_id)
        if cached is not None and cached[0] is state:
            return cached[1]
        game = Game.from_dict(state["rules"])
        self._games[game_id] = (state, game)
        return game

    # -- requests ---------------------------------------------------------------------------------
    async def start(self, args: dict[str, Any]) -> dict[str, Any]:
        """`mafia-start`: a new game of `players` (a count, bots filling the seats of no
        `humans`), or a list of names; phase lengths in seconds."""
        request = str(args.get("request") or uuid.uuid4().hex)
        game_id = str(args.get("game") or f"g{request[:8]}")  # the same for a retry
        humans = [str(h) for h in args.get("humans", [])]
        count = int(args.get("players", 12))
        if count < len(humans):
            raise ValueError(f"{len(humans)} humans do not fit in {count} seats")
        bots = [n for n in NAMES if n not in humans][: count - len(humans)]
        players = humans + bots
        seed = int(args.get("seed", random.randrange(2**31)))
        host = args.get("host")
        if host is not None:  # the bots are agents of that worker, which plays them
            host = str(host)
            joined = await self.manager.propose({"op": "join", "worker": host})
            if not joined.get("ok"):
                return joined
            for name in bots:
                added = await self.manager.propose(
                    {"op": "add_agent", "worker": host, "agent": f"{game_id}-{name}", "state": {}}
                )
                if not added.get("ok") and "exists" not in str(added.get("error")):
                    return added
        command = {
            "op": "start",
            "players": players,
            "seed": seed,
            "day_seconds": float(args.get("day_seconds", 60.0)),
            "night_seconds": float(args.get("night_seconds", 30.0)),
        }
        result = await self.manager.propose(
            {
                "op": "game",
                "game": game_id,
                "command": command,
                "bots": bots,
                "host": host,
                "request": request,
                "at": time.time(),
            }
        )
        if not result.get("ok"):
            return result
        if not result.get("duplicate"):
            await self.published(game_id, result.get("events", []))
        return {
            "ok": True,
            "game": game_id,
            "players": players,
            "bots": bots,
            "host": host,
            "seed": seed,
        }

    async def story(self, args: dict[str, Any]) -> dict[str, Any]:
        """`mafia-story`: the public story of a game so far, its phase and its winner."""
        game_id = str(args["game"])
        state = self.manager.state.games.get(game_id)
        if state is None:
            raise KeyError(f"no game {game_id!r} in mesh {self.mesh!r}")
        game = self.game(game_id, state)
        return {
            "ok": True,
            "game": game_id,
            "phase": str(game.phase),
            "round": game.round,
            "winner": None if game.winner is None else str(game.winner),
            "story": tell(game.events),
        }

    # -- wiring -----------------------------------------------------------------------------------
    async def actions(self, sub: Subscription) -> None:
        """Players' actions: proposed while this manager leads, refusals answered."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            async for msg in sub:
                if self.manager.role is not Role.LEADER:
                    continue
                task = asyncio.get_running_loop().create_task(self._act(msg))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        finally:
            for task in tasks:
                task.cancel()

    async def _act(self, msg: Message[Any]) -> None:
        game_id, player = msg.params["game"], msg.params["agent"]
        action = msg.payload
        if action.player is not None and action.player != player:
            reply = {
                "ok": False,
                "error": f"you are {player!r}; you cannot act as {action.player!r}",
            }
            await self._publish_view(game_id, player, reply)
            return
        command: dict[str, Any] = {"op": action.op, "player": player}
        if action.target is not None:
            command["target"] = action.target
        if action.text is not None:
            command["text"] = action.text
        state = self.manager.state.games.get(game_id)
        refused = (
            f"no game {game_id!r}" if state is None else self.game(game_id, state).check(command)
        )
        if refused is not None:  # answered at once, and nothing goes into the log
            await self._publish_view(game_id, player, _reply(action.op, {"error": refused}))
            return
        result = await self.propose(game_id, command, request=msg.envelope.id, worker=player)
        await self._publish_view(game_id, player, _reply(action.op, result))

    async def propose(
        self,
        game_id: str,
        command: dict[str, Any],
        *,
        request: str | None = None,
        worker: str = "-",
    ) -> dict[str, Any]:
        result = await self.manager.propose(
            {
                "op": "game",
                "game": game_id,
                "command": command,
                "worker": worker,
                "request": request or uuid.uuid4().hex,
                "at": time.time(),
            }
        )
        if result.get("ok") and not result.get("duplicate"):  # a retry's events went out already
            await self.published(game_id, result.get("events", []))
        return result

    async def published(self, game_id: str, events: list[dict[str, Any]]) -> None:
        """After a command of `game_id` applied on the leader: its events out, the state and the
        views of the players they concern republished."""
        t = self.topics
        concerned: set[str] = set()
        for event in events:
            if event["audience"] == "all":
                line = tell([event])
                payload = GameEvent(
                    game=game_id,
                    seq=event["seq"],
                    kind=event["kind"],
                    round=event["round"],
                    phase=event["phase"],
                    data=event["data"],
                    line=" ".join(line),
                )
                with contextlib.suppress(BusError):
                    await self.manager.bus.publish(
                        t["mafia.events"].build(mesh=self.mesh, game=game_id), payload
                    )
            else:
                concerned.add(event["audience"])
        await self.publish_state(game_id)
        for player in concerned:
            await self._publish_view(game_id, player, None)
        self.wake.set()

    async def publish_state(self, game_id: str) -> None:
        state = self.manager.state.games.get(game_id)
        if state is None:
            return
        game = self.game(game_id, state)
        started = state.get("phase_at")
        length = game.deadline_seconds()
        view = game.view("")
        payload = GameState(
            game=game_id,
            phase=view["phase"],
            round=view["round"],
            players=view["players"],
            alive=view["alive"],
            revealed=view["revealed"],
            votes=view["votes"],
            deadline=None if started is None or length is None else started + length,
            winner=view["winner"],
            bots=list(state["bots"]),
            host=state.get("host"),
        )
        with contextlib.suppress(BusError):
            await self.manager.bus.publish(
                self.topics["mafia.state"].build(mesh=self.mesh, game=game_id), payload
            )

    async def _publish_view(self, game_id: str, player: str, reply: dict[str, Any] | None) -> None:
        state = self.manager.state.games.get(game_id)
        game = self.game(game_id, state) if state is not None else Game()
        view = game.view(player)
        payload = PlayerView(
            game=game_id,
            player=player,
            role=view["role"],
            team=view["team"],
            phase=view["phase"],
            round=view["round"],
            alive=view["alive"],
            private=[e for e in view["events"] if e["audience"] == player],
            reply=reply,
        )
        with contextlib.suppress(BusError):
            await self.manager.bus.publish(
                self.topics["mafia.player"].build(mesh=self.mesh, game=game_id, agent=player),
                payload,
            )

    # -- the game master's clock ------------------------------------------------------------------
    async def run(self) -> None:
        """While leading: bots act once a phase; a phase ends when all acted or time is up."""
        while True:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.2):
                    await self.wake.wait()
            if not self.manager.caught_up():
                continue  # not leading, or the log of earlier terms is not applied yet
            for game_id, state in list(self.manager.state.games.items()):
                await self._step(game_id, state)

    async def _step(self, game_id: str, state: dict[str, Any]) -> None:
        game = self.game(game_id, state)
        if game.phase is Phase.OVER or game.phase is Phase.LOBBY:
            return
        key = (game_id, str(game.phase), game.round)
        if key not in self._phase_started:  # first seen by this leader: publish where it is
            self._phase_started[key] = time.monotonic()
            await self.publish_state(game_id)
        if key not in self._bots_done and state.get("host") is None:  # we play the bots
            self._bots_done.add(key)
            bots = self._bots_of(game_id, state, game)
            for name in list(game.alive):
                bot = bots.get(name)
                if bot is None or _acted(game, name):  # acted under an earlier leader
                    continue
                for command in bot.decide(game.view(name, since=game.seq)):
                    await self.propose(game_id, command, worker=name)
            return  # look again with the bots' actions applied
        length = game.deadline_seconds() or 0.0
        started = state.get("phase_at") or _wall(self._phase_started[key])
        if (game.everyone_acted() or time.time() - started >= length) and (
            key not in self._advancing
        ):
            self._advancing.add(key)
            try:
                command = {"op": "advance", "phase": str(game.phase), "round": game.round}
                request = f"{game_id}:advance-{key[1]}-{key[2]}"
                await self.propose(game_id, command, request=request)
            finally:
                self._advancing.discard(key)

    def _bots_of(self, game_id: str, state: dict[str, Any], game: Game) -> dict[str, Bot]:
        """The bots of a game, rebuilt from its events the first time (after a failover too)."""
        bots = self._bots.get(game_id)
        if bots is None:
            bots = {
                name: Bot(name, zlib.crc32(f"{game.seed}:{name}".encode()))
                for name in state["bots"]
            }
            self._bots[game_id] = bots
            self._seen[game_id] = -1
            self.observe(game_id, list(game.events))
        return bots

    def observe(self, game_id: str, events: list[Event] | list[dict[str, Any]]) -> None:
        """Events as the log applies them, in its order, reach the bots this leader plays,
        each once."""
        bots = self._bots.get(game_id)
        if bots is None:
            return
        for item in events:
            event = item if isinstance(item, Event) else Event.from_dict(item)
            if event.seq <= self._seen[game_id]:
                continue
            self._seen[game_id] = event.seq
            listeners = bots.values() if event.public else [bots.get(event.audience)]
            for bot in listeners:
                if bot is not None:
                    bot.observe(event)


def _reply(op: str, result: Mapping[str, Any]) -> dict[str, Any]:
    if result.get("ok"):
        return {"ok": True, "op": op}
    return {"ok": False, "op": op, "error": str(result.get("error", "refused"))}


def _wall(monotonic: float) -> float:
    return time.time() + (monotonic - time.monotonic())
