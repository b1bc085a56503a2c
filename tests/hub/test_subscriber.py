"""Subscriber queue policies on a real socket pair whose far end stops reading."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.base_protocol import BaseProtocol
from prometheus_client import CollectorRegistry

from luki_gateway.auth.principal import ANONYMOUS
from luki_gateway.hub.event import Event
from luki_gateway.hub.hub import Hub
from luki_gateway.hub.metrics import HubMetrics
from luki_gateway.hub.ws_subscriber import WsSubscriber
from luki_gateway.settings import HubSettings


class Stalled:
    """A WsSubscriber writing into a socket whose peer never reads."""

    def __init__(self, hub: Hub, sub: WsSubscriber, peer: socket.socket) -> None:
        self.hub = hub
        self.sub = sub
        self.peer = peer

    def received(self) -> bytes:
        """Everything the peer can read right now."""
        self.peer.setblocking(False)
        chunks = []
        while True:
            try:
                chunk = self.peer.recv(1 << 20)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


async def _stalled(**settings: Any) -> Stalled:
    hub = Hub(HubSettings(**settings), HubMetrics.create(CollectorRegistry()))
    ours, peer = socket.socketpair()
    for sock in (ours, peer):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_connection(lambda: BaseProtocol(loop), sock=ours)
    sub = WsSubscriber(hub, ANONYMOUS, transport, protocol)
    hub.register(sub)
    hub.subscribe(sub, "broadcast:a")
    hub.subscribe(sub, "broadcast:b")
    return Stalled(hub, sub, peer)


@pytest.fixture
async def cleanup() -> AsyncIterator[list[Stalled]]:
    """Close every stalled pair a test made."""
    made: list[Stalled] = []
    yield made
    for stalled in made:
        stalled.sub.transport.abort()
        stalled.peer.close()


def _event(channel: str, n: int, pad: int = 1000) -> Event:
    return Event(channel, f"{n}-0", None, f'{{"n":{n},"pad":"{"x" * pad}"}}')


def _back_up(stalled: Stalled, channel: str) -> int:
    """Deliver events of ``channel`` until one is queued (kernel buffers and transport
    full); the count delivered."""
    n = 0
    while stalled.sub._queue is None:
        stalled.hub.deliver(_event(channel, n))
        n += 1
    return n


async def _fill(stalled: Stalled, events: list[Event]) -> None:
    for event in events:
        stalled.hub.deliver(event)
    await asyncio.sleep(0)


async def test_idle_connection_holds_no_queue_or_task(cleanup: list[Stalled]) -> None:
    """While the socket takes writes there is no queue and no writer task."""
    stalled = await _stalled()
    cleanup.append(stalled)
    stalled.hub.deliver(_event("broadcast:a", 1, pad=10))
    assert stalled.sub._queue is None and stalled.sub._writer is None
    assert b'"n":1' in stalled.received()


async def test_drop_oldest_by_count_keeps_newest_and_notes_gap(cleanup: list[Stalled]
                                                               ) -> None:
    """Count-bounded queue: oldest events go, the newest stay, a gap notice is due."""
    stalled = await _stalled(queue_max_messages=10, queue_max_bytes=10_000_000,
                             slow_consumer_policy="drop_oldest")
    cleanup.append(stalled)
    await _fill(stalled, [_event("broadcast:a", n) for n in range(400)])
    sub = stalled.sub
    assert sub.queue_depth == 10
    queued = [item[1] for item in sub._queue or ()]
    assert queued == [f"{n}-0" for n in range(390, 400)]
    assert sub._gaps is not None and "broadcast:a" in sub._gaps
    assert stalled.hub.slow_actions["drop_oldest"] > 0
    assert not sub.closed
    backlog = stalled.hub.stats()["queues"]
    assert backlog["max_depth"] == 10
    assert backlog["backlogged"][0]["connection_id"] == sub.connection_id
    assert backlog["backlogged"][0]["depth"] == 10


async def test_drop_oldest_by_bytes_stays_under_the_limit(cleanup: list[Stalled]) -> None:
    """Byte-bounded queue never holds more than queue_max_bytes."""
    stalled = await _stalled(queue_max_messages=1000, queue_max_bytes=20_000,
                             slow_consumer_policy="drop_oldest")
    cleanup.append(stalled)
    for n in range(400):
        stalled.hub.deliver(_event("broadcast:a", n))
        assert stalled.sub.queued_bytes <= 20_000
    assert stalled.sub.queue_depth > 0


async def test_coalesce_keeps_newest_per_channel(cleanup: list[Stalled]) -> None:
    """Coalescing leaves at most the newest event of a channel once the queue is full."""
    stalled = await _stalled(queue_max_messages=5, queue_max_bytes=10_000_000,
                             channel_policies={"broadcast:*": "coalesce"})
    cleanup.append(stalled)
    events = [_event("broadcast:a" if n % 2 else "broadcast:b", n) for n in range(400)]
    await _fill(stalled, events)
    queued = [(item[0], item[1]) for item in stalled.sub._queue or ()]
    assert len(queued) <= 5
    assert ("broadcast:a", "399-0") in queued and ("broadcast:b", "398-0") in queued
    assert stalled.hub.slow_actions["coalesce"] > 0


@pytest.mark.parametrize("policy", ["drop_oldest", "coalesce"])
async def test_reply_on_a_full_queue_drops_the_oldest_droppable_event(
        cleanup: list[Stalled], policy: str) -> None:
    """A frame of no channel makes room by dropping the oldest event of a channel that may
    lose some (gap noted), never one of a disconnect channel; the reply is queued last."""
    stalled = await _stalled(queue_max_messages=10, queue_max_bytes=10_000_000,
                             channel_policies={"broadcast:a": "disconnect",
                                               "broadcast:b": policy})
    cleanup.append(stalled)
    sub = stalled.sub
    n = _back_up(stalled, "broadcast:a")
    await _fill(stalled, [_event("broadcast:a" if k % 2 else "broadcast:b", n + k)
                          for k in range(10 - sub.queue_depth)])
    assert sub.queue_depth == 10
    oldest_b = next(item for item in sub._queue or () if item[0] == "broadcast:b")
    sub.push_frame(b"reply")
    assert not sub.closed and sub.queue_depth == 10
    queue = list(sub._queue or ())
    assert queue[-1] == (None, "", b"reply") and oldest_b not in queue
    assert [item for item in queue if item[0] == "broadcast:a"]  # spared
    assert sub._gaps == {"broadcast:b": oldest_b[1]}


async def test_reply_on_a_queue_of_disconnect_events_closes(cleanup: list[Stalled]) -> None:
    """With only events of disconnect channels queued, there is nothing to drop: SLOW_CONSUMER."""
    stalled = await _stalled(queue_max_messages=10, queue_max_bytes=10_000_000,
                             slow_consumer_policy="disconnect")
    cleanup.append(stalled)
    sub = stalled.sub
    n = _back_up(stalled, "broadcast:a")
    await _fill(stalled, [_event("broadcast:a", n + k) for k in range(10 - sub.queue_depth)])
    assert sub.queue_depth == 10 and not sub.closed
    sub.push_frame(b"reply")
    assert sub.closed and stalled.hub.slow_actions["disconnect"] == 1


async def test_disconnect_policy_closes_with_slow_consumer(cleanup: list[Stalled]) -> None:
    """The disconnect policy forgets the connection and ends with SLOW_CONSUMER + close."""
    stalled = await _stalled(queue_max_messages=10, slow_consumer_policy="disconnect")
    cleanup.append(stalled)
    await _fill(stalled, [_event("broadcast:a", n) for n in range(400)])
    assert stalled.sub.closed
    assert not stalled.hub.connections and stalled.hub.local_count("broadcast:a") == 0
    assert stalled.hub.slow_actions["disconnect"] == 1
    assert stalled.sub.transport.is_closing()


async def test_writer_drains_backlog_when_peer_reads_again(cleanup: list[Stalled]) -> None:
    """Once the peer reads, the writer task sends the backlog in order and goes away."""
    stalled = await _stalled(queue_max_messages=1000, queue_max_bytes=10_000_000)
    cleanup.append(stalled)
    await _fill(stalled, [_event("broadcast:a", n) for n in range(300)])
    assert stalled.sub.queue_depth > 0
    seen = bytearray()
    async with asyncio.timeout(10):
        while b'"n":299,' not in seen:
            seen += stalled.received()
            await asyncio.sleep(0.001)
    order = [int(part.split(b",", 1)[0]) for part in bytes(seen).split(b'"n":')[1:]]
    assert order == list(range(300))
    assert stalled.sub._queue is None and stalled.sub._writer is None


async def test_replay_then_live_has_no_duplicates(cleanup: list[Stalled]) -> None:
    """An event the replay already sent is not sent again when the listener hands it late."""
    stalled = await _stalled()
    cleanup.append(stalled)
    hub, sub = stalled.hub, stalled.sub
    hub.unsubscribe(sub, "broadcast:a")
    first = await hub.broker.publish("broadcast:a", None, '{"n":1}')
    second = await hub.broker.publish("broadcast:a", None, '{"n":2}')
    recovery = await hub.subscribe_from(sub, "broadcast:a", first.id)
    assert [e.id for e in recovery.events] == [second.id]
    late = Event("broadcast:a", second.id, None, '{"n":2}')  # as Redis might deliver it
    assert hub.deliver(late) == 0
    newer = await hub.broker.publish("broadcast:a", None, '{"n":3}')
    received = stalled.received()
    assert received.count(b'"n":2') == 1 and b'"n":3' in received
    assert hub._replayed == {} and newer.id > second.id
