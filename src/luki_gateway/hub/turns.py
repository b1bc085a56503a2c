"""Resumable chat turns: each turn's events, kept while they are relayed.

A :class:`Turn` lives in the process that runs it: it numbers events (``seq`` from 1),
keeps the newest of them (up to ``chat.resume_max_events``), hands each to its listeners at
once and, when Redis is configured, queues it for the Redis Stream ``<prefix>turn:<turn_id>``
so a client can resume on any process. Writes to Redis are batched by one flusher task (a few
milliseconds), so relaying a token costs a list append, not a round trip.

When the last listener leaves a running turn, the upstream is kept for the grace period
(``chat.resume_grace_s``; 0 when resume is off) and then abandoned. A listener on another
process keeps it alive through the key ``<prefix>turn:<turn_id>:watch`` (short TTL), and
can cancel it through ``<prefix>turn:<turn_id>:cancel``.

Redis keys: ``turn:<id>`` (stream: fields ``s`` seq, ``e`` event, ``d`` JSON data; capped
with MAXLEN ~; TTL ``chat.resume_ttl_s``), ``turn:<id>:meta`` (hash: owner; same TTL),
``turn:<id>:watch`` (a remote listener is attached; TTL a few seconds), ``turn:<id>:cancel``
(a client on another process cancelled the turn; the owner stops it),
``turn:client:<owner>:<client id>`` (the latest WS turn a client started under that id, for a
resume before the client learnt the turn id; TTL ``chat.resume_ttl_s``), ``proc:<process
id>`` (the process named in ``:meta`` is alive; TTL a few seconds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, NamedTuple

import redis.asyncio as aioredis
import structlog
from aiohttp import web
from redis.exceptions import RedisError

from ..errors import (
    DownstreamTimeout,
    DownstreamUnavailable,
    Forbidden,
    GatewayError,
    NotFound,
    RateLimitExceeded,
)
from ..ratelimit.batch import ErrorLog
from ..redis_client import redis_of
from ..settings import SETTINGS, ChatSettings

log = structlog.get_logger("luki.turns")

TERMINAL = frozenset({"done", "error"})
# A remote listener refreshes its watch key this often; the key outlives two refreshes.
WATCH_REFRESH_S = 1.0
WATCH_TTL_MS = 3000
# Finished turns kept in this process for local resumes (Redis keeps them for all).
MAX_FINISHED_LOCAL = 1000
# WebSocket turns findable by the client's own id (for a resume before the first event).
MAX_CLIENT_IDS_LOCAL = 10_000
# Each process says it is alive (key ``proc:<id>``) every WATCH_REFRESH_S, for this long. A
# follower whose turn has been quiet for LIVENESS_QUIET_S and whose owner's key is gone
# ends the turn at once, instead of after the idle timeout and the grace period.
ALIVE_TTL_MS = 3000
LIVENESS_QUIET_S = 5.0
# The seq of the error a follower stores for a turn whose process died: past any event
# that process may have sent its own clients without storing it (so a reconnect from
# there still gets the end, and then 204).
LOST_SEQ = 2**31 - 1
# Streams one process relays a turn to (the client's own, other screens, a reconnect that
# overlaps a connection not yet found dead): they share the turn's stream slot, so this
# bounds what one slot can hold open (and, for a turn run elsewhere, Redis reads).
MAX_TURN_STREAMS = 8
# Flush at most this often, so a burst of tokens becomes one pipeline.
FLUSH_DELAY_S = 0.02
# After a failed write the batch is kept and sent again this long after (Redis is back, or
# the next attempt fails too); at most this many events wait (the oldest go first).
FLUSH_RETRY_S = 0.5
MAX_UNFLUSHED = 100_000


CLOSE_TIMEOUT_S = 2.0

# KEYS: turn streams; ARGV: maxlen, ttl, then per key its owner, a count and (seq, event,
# data) triples. Each write renews the stream's TTL and its ``:meta`` (the owner, written
# again in case Redis lost it), so a turn can be resumed from any process for ``ttl`` after
# its last event, however long it ran.
APPEND_LUA = """
local maxlen, ttl, i = ARGV[1], ARGV[2], 3
for k = 1, #KEYS do
  local owner, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  for _ = 1, n do
    redis.call('XADD', KEYS[k], 'MAXLEN', '~', maxlen, '*',
                's', ARGV[i], 'e', ARGV[i + 1], 'd', ARGV[i + 2])
    i = i + 3
  end
  redis.call('EXPIRE', KEYS[k], ttl)
  local meta = KEYS[k] .. ':meta'
  if owner ~= '' then
    redis.call('HSET', meta, 'owner', owner)
  end
  redis.call('EXPIRE', meta, ttl)
end
return #KEYS
"""


# KEYS: a turn stream; ARGV: the id of the last entry the caller saw ("0-0": none), the seq
# and data of the error that ends the turn, the TTL. Appends the error only when nothing
# was added since the caller looked (the owner is gone; also when it died before its first
# event reached Redis); returns 1 when it did, 0 when the stream moved on (the owner is
# alive after all), -1 when the stream expired.
LOST_LUA = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last == 0 then
  if ARGV[1] ~= '0-0' then return -1 end
elseif last[1][1] ~= ARGV[1] then
  return 0
end
redis.call('XADD', KEYS[1], '*', 's', ARGV[2], 'e', 'error', 'd', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class TurnLost(DownstreamTimeout):
    """The process running a followed turn stopped without ending it."""

    def __init__(self, seen_id: str) -> None:
        super().__init__("the gateway process running the turn stopped without ending it")
        self.seen_id = seen_id  # the last stream entry the follower read


def _reraise_cancel() -> None:
    """A cancel that arrived while a Redis call timed out surfaces as TimeoutError (3.11's
    asyncio.timeout); do not let it be swallowed as a Redis failure."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class TurnEvent(NamedTuple):
    """One event of a turn: its number, type, JSON (one line of UTF-8), decoded value, and
    its SSE frame (``id: <turn_id>:<seq>``, ``event:``, ``data:``), encoded once per event.

    ``value`` is the token text for ``token`` and the decoded object otherwise.
    """

    seq: int
    event: str
    data: bytes
    value: Any
    sse: bytes


Listener = Callable[[TurnEvent], None]


def id_prefix(turn_id: str) -> bytes:
    """The start of every SSE ``id:`` line of a turn's events."""
    return f"id: {turn_id}:".encode()


def turn_event(prefix: bytes, seq: int, event: str, data: bytes, value: Any) -> TurnEvent:
    """A TurnEvent with its SSE frame; ``prefix`` is :func:`id_prefix` of the turn."""
    return TurnEvent(seq, event, data, value,
                     b"%b%d\nevent: %b\ndata: %b\n\n" % (prefix, seq, event.encode(), data))


def decode_event(prefix: bytes, seq: int, event: str, data: bytes) -> TurnEvent:
    """A stored event back as a TurnEvent (tokens carry their text as value)."""
    value: Any = json.loads(data)
    if event == "token" and isinstance(value, dict):
        value = value.get("text", "")
    return turn_event(prefix, seq, event, data, value)


def too_many_streams(turn_id: str) -> RateLimitExceeded:
    """The refusal of one more stream of a turn (MAX_TURN_STREAMS)."""
    return RateLimitExceeded(
        f"too many open streams of this turn (limit {MAX_TURN_STREAMS})",
        details={"kind": "concurrency", "turn_id": turn_id, "limit": MAX_TURN_STREAMS})


class TurnStreamCounts:
    """How many streams of each turn are open in this process, at most MAX_TURN_STREAMS."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}

    def take(self, turn_id: str) -> None:
        """Count one more stream of ``turn_id`` (RateLimitExceeded when it has them all)."""
        count = self._counts.get(turn_id, 0)
        if count >= MAX_TURN_STREAMS:
            raise too_many_streams(turn_id)
        self._counts[turn_id] = count + 1

    def give_back(self, turn_id: str) -> None:
        """One stream of ``turn_id`` ended."""
        left = self._counts.get(turn_id, 1) - 1
        if left > 0:
            self._counts[turn_id] = left
        else:
            self._counts.pop(turn_id, None)


class Turn:
    """One turn running in this process: its events so far and who listens to them."""

    __slots__ = ("_grace", "_registry", "abandon", "created_at", "events", "finished",
                 "listeners", "owner", "prefix", "seq", "turn_id")

    def __init__(self, registry: TurnRegistry, turn_id: str, owner: str) -> None:
        self._registry = registry
        self.turn_id = turn_id
        self.prefix = id_prefix(turn_id)
        self.owner = owner
        self.seq = 0
        # The newest events (the resume buffer, as the Redis copy keeps them): a client
        # resumes from the last event it got, so it needs the latest ones, and the terminal
        # event is always among them.
        self.events: deque[TurnEvent] = deque(maxlen=registry.max_events)
        self.listeners: list[Listener] = []
        self.finished = False
        self.created_at = time.monotonic()
        # Called once with the reason ("client_gone", or "cancelled" when a client on
        # another process asked) to stop the turn's upstream.
        self.abandon: Callable[[str], None] | None = None
        self._grace: asyncio.Task[None] | None = None

    def publish(self, event: str, data: bytes, value: Any) -> TurnEvent:
        """Number the event, frame it once, keep it, hand it to every listener now (hot
        path: no await, no copy of ``data`` but the frame)."""
        if self.finished:
            raise RuntimeError("turn already ended")
        seq = self.seq = self.seq + 1
        item = TurnEvent(seq, event, data, value, b"%b%d\nevent: %b\ndata: %b\n\n" % (
            self.prefix, seq, event.encode(), data))
        registry = self._registry
        self.events.append(item)  # the oldest falls out past resume_max_events
        for listener in self.listeners:
            listener(item)
        if registry.redis is not None:
            registry.enqueue(self.turn_id, item)
        if event in TERMINAL:
            self.finished = True
            self._stop_grace()
            # Kept for resumes as its events only: no listener or relay stays reachable.
            self.listeners = []
            self.abandon = None
            registry.finish(self)
        return item

    def attach(self, listener: Listener, after_seq: int = 0) -> None:
        """Replay every kept event after ``after_seq`` to ``listener``, then add it live.

        RateLimitExceeded when MAX_TURN_STREAMS listen already, NotFound when events after
        ``after_seq`` are no longer kept."""
        if not self.finished and len(self.listeners) >= MAX_TURN_STREAMS:
            raise too_many_streams(self.turn_id)
        if after_seq < self.seq - len(self.events):  # events after it fell out
            raise NotFound("the turn has moved past the resume buffer",
                           details={"turn_id": self.turn_id})
        for item in self.events:
            if item.seq > after_seq:
                listener(item)
        if not self.finished:
            self.listeners = [*self.listeners, listener]
            self._stop_grace()

    def detach(self, listener: Listener) -> None:
        """Stop delivering to ``listener``; a running turn left alone starts its grace."""
        if listener in self.listeners:
            self.listeners = [x for x in self.listeners if x is not listener]
        if not self.listeners and not self.finished and self._grace is None:
            self._grace = asyncio.create_task(self._grace_then_abandon())

    def _stop_grace(self) -> None:
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None

    async def _grace_then_abandon(self) -> None:
        """Abandon the turn once nobody has listened for the grace period, here or (through
        Redis) elsewhere."""
        registry = self._registry
        # With Redis, look for a follower elsewhere every WATCH_REFRESH_S.
        step = WATCH_REFRESH_S if registry.redis else registry.grace_s
        alone_since = time.monotonic()
        while (left := alone_since + registry.grace_s - time.monotonic()) > 0:
            # A timer may fire a hair early: the rest of the period, never a second one.
            await asyncio.sleep(min(step, left))
            if await registry.watched_elsewhere(self.turn_id):
                alone_since = time.monotonic()
        self._grace = None
        if not self.listeners and not self.finished and self.abandon is not None:
            self.abandon("client_gone")


class TurnRegistry:
    """The turns of this app: live and recently finished ones, and the Redis copy."""

    def __init__(self, settings: ChatSettings, redis: aioredis.Redis | None,
                 prefix: str, redis_timeout_s: float = 0.2) -> None:
        self.resume = settings.resume
        # Followers block in XREAD for up to WATCH_REFRESH_S: longer than the shared
        # client's read timeout, so they read through a client of their own whose timeout
        # covers the block (plus Redis's 100 ms timer granularity), made on first use.
        self._follow_timeout_s = WATCH_REFRESH_S + 0.5 + redis_timeout_s
        self._follow_redis: aioredis.Redis | None = None
        # Streams of this process following a turn (start_follow), and open SSE streams of
        # a turn (stream_slot), per turn id.
        self._following = TurnStreamCounts()
        self._streams = TurnStreamCounts()
        self.grace_s = settings.resume_grace_s if settings.resume else 0.0
        self.ttl_s = settings.resume_ttl_s
        self.max_events = settings.resume_max_events if settings.resume else 0
        self.idle_timeout_s = settings.idle_timeout_s
        self.redis = redis if settings.resume else None
        self.prefix = prefix
        # This process among those sharing the Redis (its turns' ``:meta`` name it).
        self.process_id = secrets.token_hex(8)
        self.live: dict[str, Turn] = {}
        self._finished: OrderedDict[str, tuple[float, Turn]] = OrderedDict()
        self._pending: list[tuple[str, TurnEvent]] = []
        self._new_meta: list[tuple[str, str]] = []
        # (owner, client id) -> (when, turn id): the latest WS turn a client called so.
        self._by_client: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._new_client_ids: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._cancel_watch: asyncio.Task[None] | None = None
        self._errors = ErrorLog("turn buffer (writes kept for a retry)")
        self._closing = False

    # -- keys ------------------------------------------------------------------------
    def stream_key(self, turn_id: str) -> str:
        """The Redis Stream holding a turn's events."""
        return f"{self.prefix}turn:{turn_id}"

    # -- local turns -----------------------------------------------------------------
    def create(self, turn_id: str, owner: str) -> Turn:
        """A new live turn owned by principal id ``owner``."""
        turn = Turn(self, turn_id, owner)
        self.live[turn_id] = turn
        if self.redis is not None:
            self._new_meta.append((turn_id, owner))
            self._wake.set()
        return turn

    def finish(self, turn: Turn) -> None:
        """Move an ended turn to the finished set (kept for local resumes, bounded)."""
        self.live.pop(turn.turn_id, None)
        if not self.resume:
            return
        now = time.monotonic()
        finished = self._finished
        finished[turn.turn_id] = (now, turn)
        while finished:
            oldest_id, (ended_at, _) = next(iter(finished.items()))
            if len(finished) <= MAX_FINISHED_LOCAL and now - ended_at < self.ttl_s:
                break
            del finished[oldest_id]

    def name_for_client(self, owner: str, client_id: str, turn_id: str) -> None:
        """Remember that ``owner``'s client calls turn ``turn_id`` ``client_id`` (its WS
        ``chat`` id), so it can resume the turn by that id before it learnt the turn id."""
        if not self.resume:
            return
        key = (owner, client_id)
        by_client = self._by_client
        by_client.pop(key, None)
        by_client[key] = (time.monotonic(), turn_id)
        while len(by_client) > MAX_CLIENT_IDS_LOCAL:
            by_client.popitem(last=False)
        if self.redis is not None:
            self._new_client_ids.append((owner, client_id, turn_id))
            self._wake.set()

    def client_key(self, owner: str, client_id: str) -> str:
        """The Redis key naming the latest turn ``owner``'s client called ``client_id``."""
        return f"{self.prefix}turn:client:{owner}:{client_id}"

    async def turn_of_client(self, owner: str, client_id: str) -> str | None:
        """The latest turn ``owner`` started under the WS id ``client_id`` (this process,
        else Redis), within the resume TTL; None when there is none."""
        kept = self._by_client.get((owner, client_id))
        if kept is not None and time.monotonic() - kept[0] < self.ttl_s:
            return kept[1]
        if self.redis is None:
            return None
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(FLUSH_DELAY_S * 5)  # started a moment ago elsewhere
            try:
                found: Any = await self.redis.get(self.client_key(owner, client_id))
            except (RedisError, OSError):
                _reraise_cancel()
                raise DownstreamUnavailable("turn store unavailable") from None
            if found is not None:
                return str(found.decode())
        return None

    def local(self, turn_id: str) -> Turn | None:
        """The live or recently finished turn with this id in this process."""
        turn = self.live.get(turn_id)
        if turn is not None:
            return turn
        kept = self._finished.get(turn_id)
        if kept is None or time.monotonic() - kept[0] >= self.ttl_s:
            return None
        return kept[1]

    # -- Redis copy ------------------------------------------------------------------
    def enqueue(self, turn_id: str, item: TurnEvent) -> None:
        """Queue one event for the next flush (hot path: an append)."""
        self._pending.append((turn_id, item))
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> None:
        """Start the flusher and the cancel watch (Redis mode only)."""
        if self.redis is not None and self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever())
            self._cancel_watch = asyncio.create_task(self._watch_cancels())

    def alive_key(self, process_id: str) -> str:
        """The key a process keeps while it runs (its turns' followers look at it)."""
        return f"{self.prefix}proc:{process_id}"

    async def _watch_cancels(self) -> None:
        """Every WATCH_REFRESH_S: say this process is alive, and one MGET over its running
        turns: a turn a client on another process cancelled (``turn:<id>:cancel``) stops."""
        redis = self.redis
        assert redis is not None  # started in Redis mode only
        alive = self.alive_key(self.process_id)
        while True:
            with contextlib.suppress(RedisError, OSError):
                await redis.set(alive, b"1", px=ALIVE_TTL_MS)
            # redis-py can swallow a cancel that lands mid-call: stop when asked to anyway.
            _reraise_cancel()
            await asyncio.sleep(WATCH_REFRESH_S)
            turns = list(self.live.values())
            if not turns:
                continue
            try:
                flags = await redis.mget([f"{self.stream_key(t.turn_id)}:cancel"
                                          for t in turns])
            except (RedisError, OSError):
                _reraise_cancel()
                continue  # looked at again next time
            _reraise_cancel()
            for turn, flag in zip(turns, flags, strict=True):
                if flag is not None and not turn.finished and turn.abandon is not None:
                    # Once: the flag stays until its TTL, the turn ends in a moment.
                    abandon, turn.abandon = turn.abandon, None
                    abandon("cancelled")

    def _follower(self, redis: aioredis.Redis) -> aioredis.Redis:
        """The client followers block on (same server and options, longer read timeout)."""
        if self._follow_redis is None:
            pool = redis.connection_pool
            kwargs = {**pool.connection_kwargs, "socket_timeout": self._follow_timeout_s}
            self._follow_redis = aioredis.Redis.from_pool(
                type(pool)(connection_class=pool.connection_class, **kwargs))
        return self._follow_redis

    async def close(self) -> None:
        """Stop the flusher after a last flush; close the followers' client."""
        watch, self._cancel_watch = self._cancel_watch, None
        if watch is not None:
            watch.cancel()
            # Bounded: a shutdown must not hang on a Redis call that ate the cancel.
            await asyncio.wait((watch,), timeout=CLOSE_TIMEOUT_S)
            if not watch.done():
                log.warning("turn cancel watch did not stop in time")
        follow, self._follow_redis = self._follow_redis, None
        if follow is not None:
            await follow.aclose()
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            self._closing = True
            self._wake.set()
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await flusher
            except TimeoutError:
                log.warning("turn buffer flusher did not stop in time")

    async def _flush_forever(self) -> None:
        written = True
        while not self._closing:
            await self._wake.wait()
            if not self._closing:
                await asyncio.sleep(FLUSH_DELAY_S if written else FLUSH_RETRY_S)
            self._wake.clear()
            written = await self.flush()
            if not written:
                self._wake.set()  # the kept batch goes again after FLUSH_RETRY_S

    async def flush(self) -> bool:
        """Write queued metadata and events to Redis in one pipeline; False when that
        failed (they stay queued, ahead of newer ones, for the next flush)."""
        redis = self.redis
        if redis is None or not (self._pending or self._new_meta or self._new_client_ids):
            return True
        pending, self._pending = self._pending, []
        metas, self._new_meta = self._new_meta, []
        names, self._new_client_ids = self._new_client_ids, []
        pipe = redis.pipeline(transaction=False)
        for turn_id, owner in metas:
            key = f"{self.stream_key(turn_id)}:meta"
            pipe.hset(key, mapping={"owner": owner, "proc": self.process_id})
            pipe.expire(key, self.ttl_s)
        for owner, client_id, turn_id in names:
            pipe.set(self.client_key(owner, client_id), turn_id, ex=self.ttl_s)
        if pending:
            # One script call for the whole batch: per-command client overhead would
            # otherwise cost more than relaying the token itself.
            by_turn: dict[str, list[TurnEvent]] = {}
            for turn_id, item in pending:
                by_turn.setdefault(turn_id, []).append(item)
            keys: list[str] = []
            args: list[Any] = [self.max_events, self.ttl_s]
            for turn_id, items in by_turn.items():
                turn = self.local(turn_id)
                keys.append(self.stream_key(turn_id))
                args.extend((turn.owner if turn is not None else "", len(items)))
                for item in items:
                    args.extend((item.seq, item.event, item.data))
            # EVAL, not EVALSHA: the body is small and a restarted Redis needs no reload.
            pipe.eval(APPEND_LUA, len(keys), *keys, *args)
        try:
            await pipe.execute()
        except (RedisError, OSError) as exc:
            _reraise_cancel()
            # Resume from another process waits for Redis; the live relay is unaffected.
            # A batch that reached Redis before the error may be stored twice: followers
            # skip a seq they have had.
            self._keep(pending, metas)
            self._new_client_ids = names + self._new_client_ids
            self._errors.failure(exc)  # one line per interval while Redis stays away
            return False
        return True

    def _keep(self, pending: list[tuple[str, TurnEvent]], metas: list[tuple[str, str]]
              ) -> None:
        """Put a failed batch back in front of what was queued since (bounded)."""
        self._pending = pending + self._pending
        self._new_meta = metas + self._new_meta
        excess = len(self._pending) - MAX_UNFLUSHED
        if excess > 0:
            del self._pending[:excess]
            log.error("turn buffer: Redis unavailable too long, oldest events dropped",
                      dropped=excess)

    async def watched_elsewhere(self, turn_id: str) -> bool:
        """True when a listener on another process is attached to this turn."""
        if self.redis is None:
            return False
        try:
            return bool(await self.redis.exists(f"{self.stream_key(turn_id)}:watch"))
        except (RedisError, OSError):
            _reraise_cancel()
            return False

    async def request_cancel(self, turn_id: str) -> bool:
        """Ask the process running ``turn_id`` to cancel it (it looks every
        WATCH_REFRESH_S); False when Redis cannot take the request."""
        if self.redis is None:
            return False
        try:
            await self.redis.set(f"{self.stream_key(turn_id)}:cancel", b"1",
                                 px=int(self.ttl_s * 1000))
        except (RedisError, OSError):
            _reraise_cancel()
            return False
        return True

    async def check_remote(self, turn_id: str, owner: str) -> str | None:
        """Raise unless ``owner`` may follow turn ``turn_id`` kept in Redis; the id of the
        process running it (None if not recorded).

        NotFound (no Redis, unknown or expired turn), Forbidden (another principal's),
        DownstreamUnavailable (Redis down).
        """
        redis = self.redis
        if redis is None:
            raise NotFound("no such turn", details={"turn_id": turn_id})
        stored: Any = [None, None]
        for attempt in range(3):
            if attempt:
                # A turn started a moment ago may not be flushed to Redis yet.
                await asyncio.sleep(FLUSH_DELAY_S * 5)
            try:
                stored = await redis.hmget(f"{self.stream_key(turn_id)}:meta",
                                           ["owner", "proc"])
            except (RedisError, OSError):
                raise DownstreamUnavailable("turn store unavailable") from None
            if stored[0] is not None:
                break
        stored_owner, process = stored
        if stored_owner is None:
            raise NotFound("no such turn", details={"turn_id": turn_id})
        if stored_owner.decode() != owner:
            raise Forbidden("only the principal who started a turn may resume it")
        return process.decode() if process is not None else None

    async def remote_end(self, turn_id: str) -> int | None:
        """The ``seq`` of the terminal event of a turn kept in Redis, None while it runs
        (the caller has checked the turn with :meth:`check_remote`)."""
        redis = self.redis
        if redis is None:
            return None
        try:
            last: Any = await redis.xrevrange(self.stream_key(turn_id), "+", "-", count=1)
        except (RedisError, OSError):
            _reraise_cancel()
            raise DownstreamUnavailable("turn store unavailable") from None
        if not last or last[0][1][b"e"].decode() not in TERMINAL:
            return None
        return int(last[0][1][b"s"])

    async def has_remote_end(self, turn_id: str, owner: str, after_seq: int) -> bool:
        """:meth:`check_remote` (raises the same), then True when a client that has the
        events up to ``after_seq`` already has the turn's terminal event.

        NotFound when events after ``after_seq`` are no longer kept (the Redis copy keeps
        the newest ``resume_max_events``): told before any stream starts, as a 404 that
        stops an EventSource, not as an error event it would reconnect after."""
        await self.check_remote(turn_id, owner)
        last = await self.remote_end(turn_id)
        if last is not None and after_seq >= last:
            return True
        redis = self.redis
        if redis is not None and after_seq > 0:
            try:
                first: Any = await redis.xrange(self.stream_key(turn_id), "-", "+", count=1)
            except (RedisError, OSError):
                _reraise_cancel()
                raise DownstreamUnavailable("turn store unavailable") from None
            if first and int(first[0][1][b"s"]) > after_seq + 1:
                raise NotFound("the turn has moved past the resume buffer",
                               details={"turn_id": turn_id})
        return False

    @contextlib.contextmanager
    def stream_slot(self, turn_id: str) -> Iterator[None]:
        """Hold one of the MAX_TURN_STREAMS places of ``turn_id``'s SSE streams in this
        process for the life of one (RateLimitExceeded when none is free). Counted apart
        from the turn's listeners: a stream of a finished turn, or one still writing what a
        follower read, holds a connection all the same."""
        self._streams.take(turn_id)
        try:
            yield
        finally:
            self._streams.give_back(turn_id)

    def start_follow(self, turn_id: str, owner: str, after_seq: int, listener: Listener,
                     trace_id: str) -> asyncio.Task[None]:
        """:meth:`follow` in a task of its own, at most MAX_TURN_STREAMS per turn in this
        process (RateLimitExceeded beyond)."""
        self._following.take(turn_id)
        task = asyncio.create_task(self.follow(turn_id, owner, after_seq, listener, trace_id))
        task.add_done_callback(lambda _: self._following.give_back(turn_id))
        return task

    async def follow(self, turn_id: str, owner: str, after_seq: int, listener: Listener,
                     trace_id: str) -> None:
        """Hand a turn run by another process to ``listener`` until its end (returns
        without a terminal event only when the client had it already).

        When it cannot be followed for now (Redis down) the listener gets an ``error``
        numbered like the last event it got, so a resume after that error misses nothing.
        When the process running the turn is gone, the follower ends the turn for everyone:
        the ``error`` is stored as the turn's last event (seq LOST_SEQ), so a client that
        got it is told ``204`` on its next reconnect instead of waiting for it again.
        """
        while True:
            try:
                async for item in self.remote_events(turn_id, owner, after_seq):
                    after_seq = item.seq
                    listener(item)
                return
            except TurnLost as lost:
                value = lost.body(trace_id)
                data = json.dumps(value).encode()
                if await self._end_lost(turn_id, lost, data):
                    listener(turn_event(id_prefix(turn_id), LOST_SEQ, "error", data, value))
                    return
                # The owner wrote again after all: follow on from what the client has.
            except GatewayError as err:
                value = err.body(trace_id)
                listener(turn_event(id_prefix(turn_id), after_seq, "error",
                                    json.dumps(value).encode(), value))
                return

    async def _alive(self, process_id: str) -> bool:
        """True unless the process's alive key is gone (Redis failing: assume alive)."""
        redis = self.redis
        if redis is None:
            return True
        try:
            return bool(await redis.exists(self.alive_key(process_id)))
        except (RedisError, OSError):
            _reraise_cancel()
            return True

    async def _end_lost(self, turn_id: str, lost: TurnLost, data: bytes) -> bool:
        """Store ``lost``'s error as the end of a turn whose owner is gone; False when the
        stream moved on since the follower looked (the owner is alive)."""
        redis = self.redis
        if redis is None:
            return True
        try:
            done: Any = await redis.eval(LOST_LUA, 1, self.stream_key(turn_id),
                                         lost.seen_id, LOST_SEQ, data, self.ttl_s)
        except (RedisError, OSError):
            _reraise_cancel()
            return True  # the client still gets the error; a later resume will look again
        return int(done) != 0

    async def remote_events(self, turn_id: str, owner: str, after_seq: int
                            ) -> AsyncIterator[TurnEvent]:
        """Events of a turn run by another process: kept ones after ``after_seq``, then live.

        Raises NotFound (unknown or expired turn), Forbidden (another principal's turn),
        DownstreamUnavailable (Redis down); ends after the terminal event.
        """
        process = await self.check_remote(turn_id, owner)
        redis = self.redis
        if redis is None:  # check_remote refused already; this narrows the type
            return
        key = self.stream_key(turn_id)
        prefix = id_prefix(turn_id)
        last_id = "0-0"
        first = True
        quiet_since = watched_at = time.monotonic()
        batch: Any
        while True:
            try:
                if first or time.monotonic() - watched_at >= WATCH_REFRESH_S:
                    await redis.set(f"{key}:watch", b"1", px=WATCH_TTL_MS)
                    watched_at = time.monotonic()
                if first:
                    batch = await redis.xrange(key, "-", "+")
                else:
                    found: Any = await self._follower(redis).xread(
                        {key: last_id}, block=int(WATCH_REFRESH_S * 1000))
                    batch = found[0][1] if found else []
                # redis-py can swallow a cancel that lands as its read times out (the
                # call then returns normally): a follower whose client left must stop.
                _reraise_cancel()
            except (RedisError, OSError):
                _reraise_cancel()
                raise DownstreamUnavailable("turn store unavailable") from None
            if first and batch:
                oldest = int(batch[0][1][b"s"])
                if oldest > after_seq + 1:
                    raise NotFound("the turn has moved past the resume buffer",
                                   details={"turn_id": turn_id})
            first = False
            for entry_id, fields in batch:
                last_id = entry_id.decode()
                seq = int(fields[b"s"])
                if seq <= after_seq:
                    # Had already, or stored twice (a batch resent after a broken connection).
                    if fields[b"e"].decode() in TERMINAL:
                        return  # the follower has the end already: nothing more comes
                    continue
                item = decode_event(prefix, seq, fields[b"e"].decode(), fields[b"d"])
                after_seq = seq
                yield item
                if item.event in TERMINAL:
                    return
            if batch:
                quiet_since = time.monotonic()
                continue
            quiet = time.monotonic() - quiet_since
            if quiet > self.idle_timeout_s + self.grace_s or (
                    quiet > LIVENESS_QUIET_S and process is not None
                    and not await self._alive(process)):
                # The process running the turn is gone (its key expired; or, unknown, it
                # would have ended the turn by its own idle timeout): say so.
                raise TurnLost(last_id)


TURNS = web.AppKey("turns", TurnRegistry)


async def turns_ctx(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the turn registry and, with Redis, its flusher."""
    settings = app[SETTINGS]
    registry = TurnRegistry(settings.chat, redis_of(app), settings.redis_prefix,
                            settings.redis_timeout_s)
    app[TURNS] = registry
    if registry.redis is None and settings.workers > 1 and settings.chat.resume:
        log.warning("chat resume without REDIS_URL under several workers: a turn resumes "
                    "only on the worker that runs it", workers=settings.workers)
    registry.start()
    try:
        yield
    finally:
        await registry.close()
