"""Hypothesis-generated payloads for every socket event (docs/reliability.md): 2,000 examples in
all, spread over the events, against one server process on MariaDB + Redis shared by the
module, each through one real Socket.IO client.

Every answer is an ack `{"ok": true, ...}` or `{"ok": false, "error": {code, message}}` with a
SPEC §5 code (never `internal`), the socket stays connected, and the server logs no ERROR.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import engineio.packet
import pytest
import socketio.packet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chat.sockets import CLIENT_EVENTS
from tests.conftest import MySQLDatabases
from tests.support import Api, Client, ServerProcess, fetch, make_token

TOTAL_EXAMPLES = 2000
FIELDS: dict[str, list[str]] = {
    "join": ["conversation_id", "since_seq", "include_replies"],
    "leave": ["conversation_id"],
    "send": ["conversation_id", "body", "client_msg_id", "attachments", "thread_id"],
    "edit": ["message_id", "body"],
    "delete": ["message_id"],
    "history": ["conversation_id", "before_seq", "limit", "thread_id", "include_replies"],
    "typing": ["conversation_id", "typing"],
    "read": ["conversation_id", "seq"],
    "subscribe": ["channel"],
    "unsubscribe": ["channel"],
    "refresh_token": ["token"],
    "react": ["conversation_id", "message_id", "emoji", "on"],
    "moderator": ["creator_id", "user_id", "on"],
    "timeout": ["creator_id", "user_id", "minutes", "reason"],
    "block": ["creator_id", "user_id", "on", "reason"],
    "moderation_log": ["creator_id", "before_id", "limit"],
    "slow_mode": ["conversation_id", "seconds", "reason"],
    "pin": ["message_id", "on"],
    "accept_guidelines": ["conversation_id", "version"],
    "report": ["message_id", "reason", "note"],
    "reports": ["creator_id", "status", "conversation_id", "before_id", "limit"],
    "review_report": ["message_id", "action", "note"],
    "block_user": ["user_id", "on"],
    "blocks": ["limit"],
    "no_such_event": ["conversation_id"],
}
PER_EVENT = -(-TOTAL_EXAMPLES // len(FIELDS))
CODES = {"invalid", "unauthorized", "forbidden", "not_found", "conflict", "too_large", "rate_limited"}


@dataclass
class Env:
    server: ServerProcess
    loop: asyncio.AbstractEventLoop
    client: Client
    room: str
    message_id: str

    def call(self, event: str, data: Any) -> Any:
        return self.loop.run_until_complete(self.client.call(event, data, timeout=15))


@pytest.fixture(scope="module")
def env(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Env]:
    server = ServerProcess(mysql_databases.new(), redis_url, f"{redis_prefix_root}-fuzz",
                           env={"JOIN_RATE_PER_S": "10000", "JOIN_BURST": "10000"})
    api = Api(server.url)
    loop = asyncio.new_event_loop()
    client = None
    # The test client encodes with the standard json module (integers of any size), whatever
    # codec another module's in-process app or publisher installed in python-socketio.
    codecs = socketio.packet.Packet.json, engineio.packet.Packet.json
    socketio.packet.Packet.json = engineio.packet.Packet.json = json
    try:
        api.user("cre")
        token = api.user("pat")
        api.membership("cre", "pat", 500)
        room = api.room("cre", "Lounge", 0)
        r = api.client(token, "POST", f"/conversations/{room}/messages", json={"body": "seed", "client_msg_id": "s-1"})
        assert r.status_code == 201, r.text
        client = loop.run_until_complete(Client(server.url, make_token("pat", ttl=86400)).connect())
        yield Env(server, loop, client, room, r.json()["message"]["id"])
    finally:
        if client is not None:
            loop.run_until_complete(client.close())
        loop.close()
        api.close()
        server.stop()
        socketio.packet.Packet.json, engineio.packet.Packet.json = codecs


# JSON values as a JSON client could send them (no NaN or infinities: they are not JSON).
scalars = (st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=40))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


def field_values(env_ids: dict[str, str]) -> st.SearchStrategy[Any]:
    """Values near the edges of what the fields accept, and real ids, and anything at all."""
    return st.one_of(
        st.sampled_from(list(env_ids.values())),
        st.sampled_from(["0", "1", "01", " 1", "1\n", "-1", "1e3", "²", "١", "9" * 19, "", " ", "user:pat",
                         "creator:cre", "room:1", "user:other", "x" * 141, "\ud7ff", "\x00", "a" * 4001,
                         "spam", "other", "dismiss", "remove", "open", "all"]),
        st.sampled_from(["👍", "❤", "❤️", "👍🏽", "🏻", "🇺", "👍👍", ":fire:", ":nope:", "::", "#️⃣", "😀\u0301"]),
        st.integers(min_value=-(2**64), max_value=2**64),
        st.text(max_size=80),
        json_values,
    )


def payloads(event: str, env_ids: dict[str, str]) -> st.SearchStrategy[Any]:
    shaped = st.fixed_dictionaries({}, optional={f: field_values(env_ids) for f in FIELDS[event]}).flatmap(
        lambda d: st.dictionaries(st.text(max_size=12), json_values, max_size=2).map(lambda extra: {**extra, **d}))
    return st.one_of(shaped, shaped, json_values)


def test_every_client_event_is_fuzzed() -> None:
    assert set(CLIENT_EVENTS) <= set(FIELDS), set(CLIENT_EVENTS) - set(FIELDS)


@pytest.mark.parametrize("event", list(FIELDS))
def test_event_payloads(env: Env, event: str) -> None:
    ids = {"room": env.room, "message": env.message_id, "channel": "user:pat", "creator": "cre", "patron": "pat"}

    @settings(max_examples=PER_EVENT, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(data=payloads(event, ids))
    def run(data: Any) -> None:
        ack = env.call(event, data)
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), (event, data, ack)
        if not ack["ok"]:
            error = ack.get("error")
            assert isinstance(error, dict) and error.get("code") in CODES, (event, data, ack)
            assert isinstance(error.get("message"), str), (event, data, ack)
        assert env.client.sio.connected, (event, data)

    run()


def test_zz_no_error_logged(env: Env) -> None:
    """Runs last in this module: nothing above made the server log an ERROR or a traceback."""
    assert env.client.sio.connected
    assert env.call("history", {"conversation_id": env.room})["ok"]
    metrics = fetch("GET", env.server.url + "/metrics", timeout=5).text
    handled = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                  if line.startswith("backstage_socket_events_total{"))
    assert handled >= TOTAL_EXAMPLES, handled
    log = env.server.log()
    assert " ERROR " not in log and "Traceback" not in log, log[-5000:]
