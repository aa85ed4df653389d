"""The bad-input matrix (SPEC §4, §5): every socket event and every HTTP endpoint, fed
wrong shapes, wrong types, unknown ids in every form and oversized payloads.

Each socket case runs on its own connection to one server process shared by the module, on
SQLite and again on MariaDB + Redis (which converts strings such as '1e3' where SQLite would
not), and after the bad input checks that the SAME socket still answers a valid call and that
the server is alive. After every test, the log lines that test's server wrote meanwhile must
show no handler failing with an unexpected exception (and the whole log again when the server
stops), whatever the order of the tests or the -k selection.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.support import API_KEY, Api, Client, ServerProcess, fetch, make_token, migrated_sqlite


@dataclass
class Env:
    server: ServerProcess
    api: Api
    room: str
    other_room: str  # a room the patron may not read
    msg_id: str  # the patron's own message in `room` (seq 1)
    creator: str
    patron: str


LOG_FAILURES = ("Traceback", "socket event failed", "HTTP handler failed", "connect failed")


def assert_log_clean(text: str, where: str) -> None:
    for marker in LOG_FAILURES:
        assert marker not in text, f"{marker!r} in the server log ({where}):\n{text[-5000:]}"


@pytest.fixture(scope="module", params=["sqlite", "mysql"])
def env(request: Any, tmp_path_factory: Any, mysql_databases: Any, redis_url: str,
        redis_prefix_root: str) -> Iterator[Env]:
    if request.param == "sqlite":
        server = ServerProcess(migrated_sqlite(tmp_path_factory.mktemp('badinput') / 'backstage.db'))
    else:
        server = ServerProcess(mysql_databases.new(), redis_url, f"{redis_prefix_root}-badinput")
    yield from _env(server)
    assert_log_clean(server.log_path.read_text(), f"whole log of the {request.param} server")


@pytest.fixture(autouse=True)
def _log_stays_clean(request: Any) -> Iterator[None]:
    """Checks the log lines written while this test ran, on the server this test used."""
    if "env" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("env").server
    start = len(server.log())
    yield
    assert_log_clean(server.log()[start:], request.node.nodeid)


def _env(server: ServerProcess) -> Iterator[Env]:
    api = Api(server.url)
    try:
        creator = api.user("cre", "Cre")
        patron = api.user("pat", "Pat")
        api.membership("cre", "pat", 500)
        room = api.room("cre", "Lounge", 0)
        other_room = api.room("cre", "Gold", 10_000)
        r = api.client(patron, "POST", f"/conversations/{room}/messages", json={"body": "seed", "client_msg_id": "seed-1"})
        assert r.status_code == 201, r.text
        yield Env(server, api, room, other_room, r.json()["message"]["id"], creator, patron)
    finally:
        api.close()
        server.stop()


@pytest.fixture(scope="module")
def raw_env(tmp_path_factory: Any) -> Iterator[Env]:
    """A server of its own for hand-made packets: python-socketio logs a traceback for a
    packet it cannot parse, so this server's log is not checked."""
    yield from _env(ServerProcess(migrated_sqlite(tmp_path_factory.mktemp('rawpackets') / 'backstage.db')))


@pytest.fixture
async def sock(env: Env) -> AsyncIterator[Client]:
    c = await Client(env.server.url, env.patron).connect()
    try:
        yield c
    finally:
        await c.close()


async def assert_still_works(c: Client, env: Env) -> None:
    """The same socket answers a valid call, and the server process is alive."""
    assert c.sio.connected, "a bad input disconnected the socket"
    r = await c.call("history", {"conversation_id": env.room, "limit": 1})
    assert r["ok"] is True, r
    assert env.server.proc.poll() is None
    assert fetch("GET", env.server.url + "/healthz", timeout=5).status_code == 200


def assert_error(ack: Any, code: str | tuple[str, ...]) -> None:
    codes = (code,) if isinstance(code, str) else code
    assert isinstance(ack, dict) and ack.get("ok") is False, ack
    assert ack["error"]["code"] in codes, ack
    assert isinstance(ack["error"].get("message"), str), ack


# ---------------------------------------------------------------- the socket matrix

VALID: dict[str, Callable[[Env], dict[str, Any]]] = {
    "join": lambda e: {"conversation_id": e.room, "since_seq": 0},
    "leave": lambda e: {"conversation_id": e.room},
    "send": lambda e: {"conversation_id": e.room, "body": "hello", "client_msg_id": "valid-1"},
    "edit": lambda e: {"message_id": e.msg_id, "body": "edited"},
    "delete": lambda e: {"message_id": e.msg_id},
    "history": lambda e: {"conversation_id": e.room, "before_seq": 5, "limit": 10},
    "typing": lambda e: {"conversation_id": e.room, "typing": True},
    "read": lambda e: {"conversation_id": e.room, "seq": 1},
    "subscribe": lambda e: {"channel": "user:pat"},
    "unsubscribe": lambda e: {"channel": "user:pat"},
}
EVENTS = list(VALID)

# field -> (kind, required)
FIELDS: dict[str, dict[str, tuple[str, bool]]] = {
    "join": {"conversation_id": ("id", True), "since_seq": ("int", False)},
    "leave": {"conversation_id": ("id", True)},
    "send": {"conversation_id": ("id", True), "body": ("body", True), "client_msg_id": ("cmid", True)},
    "edit": {"message_id": ("id", True), "body": ("body", True)},
    "delete": {"message_id": ("id", True)},
    "history": {"conversation_id": ("id", True), "before_seq": ("int", False), "after_seq": ("int", False),
                "limit": ("limit", False)},
    "typing": {"conversation_id": ("id", True), "typing": ("bool", True)},
    "read": {"conversation_id": ("id", True), "seq": ("int", True)},
    "subscribe": {"channel": ("str", True)},
    "unsubscribe": {"channel": ("str", True)},
}

NESTED = {"a": {"b": {"c": [1, {"d": None}]}}}
NON_OBJECTS: list[tuple[str, Any]] = [
    ("none", None), ("string", "string"), ("int", 123), ("true", True), ("false", False),
    ("float", 1.5), ("empty-list", []), ("list", [1, 2]), ("list-of-object", [{"conversation_id": "1"}]),
    ("empty-string", ""),
]
WRONG: dict[str, list[tuple[str, Any]]] = {
    "id": [("null", None), ("object", {}), ("nested", NESTED), ("list", ["1"]), ("true", True),
           ("false", False), ("float", 1.5)],
    "int": [("string", "1"), ("word", "abc"), ("object", {}), ("nested", NESTED), ("list", [1]),
            ("true", True), ("float", 1.5), ("negative", -1), ("huge", 2**70)],
    "limit": [("string", "10"), ("object", {}), ("list", [10]), ("true", True), ("float", 1.5),
              ("zero", 0), ("over-100", 101), ("negative", -5), ("huge", 2**70)],
    "body": [("null", None), ("int", 123), ("float", 1.5), ("true", True), ("object", {}),
             ("nested", NESTED), ("list", ["a"]), ("empty", ""), ("blank", " \n\t "),
             ("4001-chars", "x" * 4001), ("5000-chars", "x" * 5000), ("60KB", "x" * 60_000)],
    "cmid": [("null", None), ("int", 123), ("true", True), ("object", {}), ("nested", NESTED),
             ("list", ["a"]), ("empty", ""), ("space", "a b"), ("65-chars", "c" * 65),
             ("newline", "abc\n"), ("non-ascii", "é"), ("60KB", "c" * 60_000)],
    "str": [("null", None), ("int", 123), ("true", True), ("object", {}), ("nested", NESTED),
            ("list", ["user:pat"]), ("empty", ""), ("blank", "   "), ("60KB", "u" * 60_000)],
    "bool": [("null", None), ("string", "true"), ("int-1", 1), ("int-0", 0), ("object", {}),
             ("list", [True])],
}

# Strings that name no conversation or message, whatever their form (SPEC §5 not_found).
UNKNOWN_IDS = ["999999", "abc", "-1", "1e3", "", " ", "0", "01", "+1", " 1", "1 ", "1\n", "1.0", "0x1",
               "1_0", "²", "１", "١", "9" * 18, "9" * 19, "9" * 400, "null", "undefined", "NaN",
               "room:1", "../1", "1;DROP TABLE messages", "1' OR '1'='1", "%31", "x" * 60_000]


def _cases() -> list[Any]:
    out = []
    for event in EVENTS:
        for label, payload in NON_OBJECTS:
            out.append(pytest.param(event, ("whole", payload), "invalid", id=f"{event}-payload-{label}"))
        out.append(pytest.param(event, ("whole", {}), "invalid", id=f"{event}-empty-object"))
        out.append(pytest.param(event, ("whole", {"unrelated": 1}), "invalid", id=f"{event}-unrelated-field"))
        for field, (kind, required) in FIELDS[event].items():
            if required:
                out.append(pytest.param(event, ("drop", field), "invalid", id=f"{event}-{field}-missing"))
            for label, value in WRONG[kind]:
                expected = "invalid"
                if kind == "id" and value is None:
                    expected = "invalid"
                out.append(pytest.param(event, ("set", field, value), expected, id=f"{event}-{field}-{label}"))
    return out


def _build(env: Env, event: str, mutation: tuple[Any, ...]) -> Any:
    if mutation[0] == "whole":
        return mutation[1]
    payload = VALID[event](env)
    if mutation[0] == "drop":
        payload.pop(mutation[1])
    else:
        payload[mutation[1]] = mutation[2]
    return payload


@pytest.mark.parametrize("event,mutation,code", _cases())
async def test_socket_bad_payload(env: Env, sock: Client, event: str, mutation: tuple[Any, ...], code: str) -> None:
    if event == "typing":
        assert (await sock.call("join", {"conversation_id": env.room}))["ok"]
    assert_error(await sock.call(event, _build(env, event, mutation)), code)
    await assert_still_works(sock, env)


@pytest.mark.parametrize("event", EVENTS)
async def test_socket_valid_payloads_work(env: Env, sock: Client, event: str) -> None:
    """The control for the matrix: the unmutated payloads succeed on this server."""
    if event == "typing":
        assert (await sock.call("join", {"conversation_id": env.room}))["ok"]
    payload = VALID[event](env)
    if event == "send":
        payload["client_msg_id"] = f"valid-{event}-{id(sock)}"
    if event == "delete":
        # delete the socket's own fresh message, keep the seed for the other cases
        sent = await sock.call("send", {"conversation_id": env.room, "body": "to delete", "client_msg_id": f"del-{id(sock)}"})
        payload = {"message_id": sent["message"]["id"]}
    r = await sock.call(event, payload)
    assert r["ok"] is True, r
    await assert_still_works(sock, env)


ID_EVENTS = [(e, f) for e in EVENTS for f, (kind, _) in FIELDS[e].items() if kind == "id"]


@pytest.mark.parametrize("event,field", ID_EVENTS)
async def test_socket_unknown_ids(env: Env, sock: Client, event: str, field: str) -> None:
    for unknown in UNKNOWN_IDS:
        payload = VALID[event](env)
        payload[field] = unknown
        if event == "send":
            payload["client_msg_id"] = f"unknown-{abs(hash(unknown))}"
        ack = await sock.call(event, payload)
        assert isinstance(ack, dict) and ack.get("ok") is False, (unknown, ack)
        assert ack["error"]["code"] == "not_found", (unknown, ack)
    await assert_still_works(sock, env)


@pytest.mark.parametrize("channel,code", [
    ("foo", "forbidden"), ("user:", "forbidden"), ("user:other", "forbidden"), ("USER:pat", "forbidden"),
    ("user:pat:x", "forbidden"), ("room:999999", "forbidden"),
    ("room:abc", "forbidden"), ("room:²", "forbidden"), ("room:01", "forbidden"), ("creator:nobody", "forbidden"),
    ("room:", "forbidden"), ("x" * 141, "invalid"),
])
async def test_socket_subscribe_bad_channels(env: Env, sock: Client, channel: str, code: str) -> None:
    assert_error(await sock.call("subscribe", {"channel": channel}), code)
    await assert_still_works(sock, env)


async def test_socket_semantic_bad_values(env: Env, sock: Client) -> None:
    # read: a seq above the conversation's last is invalid
    assert_error(await sock.call("read", {"conversation_id": env.room, "seq": 10_000}), "invalid")
    # body: 4,000 characters after trimming is fine, 4,001 is not
    ok = await sock.call("send", {"conversation_id": env.room, "body": "  " + "y" * 4000 + "\n ", "client_msg_id": "b4000"})
    assert ok["ok"] and len(ok["message"]["body"]) == 4000, ok
    assert_error(await sock.call("send", {"conversation_id": env.room, "body": "y" * 4001, "client_msg_id": "b4001"}), "invalid")
    assert_error(await sock.call("edit", {"message_id": env.msg_id, "body": "y" * 4001}), "invalid")
    # unknown extra fields are ignored
    ok = await sock.call("history", {"conversation_id": env.room, "extra": "z" * 50_000, "nested": NESTED})
    assert ok["ok"], ok
    # unusual but valid text round-trips
    for i, body in enumerate(["😀 emoji", "a\u0000b", "<script>alert(1)</script>", "ümlaut \u202e rtl", "\\x00"]):
        r = await sock.call("send", {"conversation_id": env.room, "body": body, "client_msg_id": f"odd-{i}"})
        assert r["ok"] and r["message"]["body"] == body.strip(), r
    await assert_still_works(sock, env)


@pytest.mark.parametrize("event", EVENTS)
async def test_socket_too_large(env: Env, sock: Client, event: str) -> None:
    payload = VALID[event](env)
    payload["padding"] = "p" * (64 * 1024 + 10)
    assert_error(await sock.call(event, payload), "too_large")
    payload["padding"] = "é" * 40_000  # 80 KB of UTF-8, 40,000 characters
    assert_error(await sock.call(event, payload), "too_large")
    payload["padding"] = "p" * 900_000  # far over the soft limit, under Engine.IO's hard one
    assert_error(await sock.call(event, payload), "too_large")
    await assert_still_works(sock, env)


async def test_socket_binary_and_deep_payloads(env: Env, sock: Client) -> None:
    """Socket.IO carries binary attachments; none of our fields is binary."""
    cases = [
        ("send", {"conversation_id": env.room, "body": b"bytes body", "client_msg_id": "bin-1"}, "invalid"),
        ("send", {"conversation_id": env.room, "body": "ok", "client_msg_id": b"bin-2"}, "invalid"),
        ("join", {"conversation_id": env.room.encode()}, "invalid"),
        ("history", {"conversation_id": env.room, "extra": b"\x00" * 10}, None),  # an ignored extra field
        ("send", b"\x00\x01", "invalid"),
        ("send", [b"a", b"b"], "invalid"),
        ("send", {"conversation_id": env.room, "body": "x", "client_msg_id": "bin-3", "blob": b"b" * 70_000}, "too_large"),
    ]
    deep: Any = "leaf"
    for _ in range(300):
        deep = [deep]
    # Nesting deeper than the server re-encodes is refused as a whole, not an internal error.
    cases.append(("history", {"conversation_id": env.room, "deep": deep}, "invalid"))
    cases.append(("send", {"conversation_id": env.room, "body": deep, "client_msg_id": "deep-1"}, "invalid"))
    for event, payload, code in cases:
        ack = await sock.call(event, payload)
        if code is None:
            assert ack["ok"] is True, (event, ack)
        else:
            assert isinstance(ack, dict) and ack.get("ok") is False and ack["error"]["code"] == code, (event, ack)
        await assert_still_works(sock, env)


@pytest.mark.parametrize("event", ["nonexistent", "JOIN", "join ", "", "*", "message", "event", "typing_",
                                   "connect", "disconnect", "connect_error", "__proto__", "constructor", "x" * 1000])
async def test_socket_unknown_events(env: Env, sock: Client, event: str) -> None:
    joined = await sock.call("join", {"conversation_id": env.room})
    assert joined["ok"], joined
    assert_error(await sock.call(event, {"conversation_id": env.room}), "invalid")
    assert_error(await sock.call(event), "invalid")
    await assert_still_works(sock, env)
    # The socket's session is intact: it is still in the room and still the same user.
    r = await sock.call("send", {"conversation_id": env.room, "body": f"after {event[:20]}",
                                 "client_msg_id": f"after-{abs(hash(event))}"})
    assert r["ok"] and r["message"]["sender"]["id"] == "pat", r
    await sock.wait_for("message", lambda m: m["id"] == r["message"]["id"], timeout=5)


async def test_socket_events_without_ack(env: Env, sock: Client) -> None:
    """No ack callback: the server handles the event all the same and keeps working."""
    for payload in (None, "x", 5, [], {}, {"conversation_id": {"$ne": 1}}, {"padding": "p" * 70_000}):
        for event in EVENTS:
            await sock.sio.emit(event, payload)
    await sock.sio.emit("nonexistent", {"a": 1})
    await sock.sio.emit("join", {"conversation_id": env.room})
    await sock.sio.emit("send", {"conversation_id": env.room, "body": "no ack", "client_msg_id": "noack-1"})
    # Events of one socket run in order: once this ack arrives, the ack-less send is stored.
    hist = await sock.call("history", {"conversation_id": env.room, "limit": 100})
    assert hist["ok"], hist
    assert any(m["client_msg_id"] == "noack-1" and m["body"] == "no ack" for m in hist["messages"]), hist
    await sock.wait_for("message", lambda m: m["client_msg_id"] == "noack-1", timeout=5)  # joined without ack
    await assert_still_works(sock, env)


@pytest.mark.parametrize("raw", [
    '2["send",', '2[]', '2{"a":1}', '2[123,{}]', '2[null]', '2"join"', '29999999999999999999["join",{}]',
    '2/nonexistent,["join",{}]', '9', '', '2["send","\\ud800"]', '4"oops"', '3["late ack"]', '31234[{}]',
    '51-["send",{"body":{"_placeholder":true,"num":0}}]', '0{"token":"x"}', '1',
])
async def test_socket_malformed_packets(raw_env: Env, raw: str) -> None:
    """Hand-made Socket.IO packets. python-socketio logs a traceback for a packet it cannot
    parse (hence a server of their own, whose log is not checked); the server process must
    survive and keep serving, on that socket and others."""
    env = raw_env
    sock = await Client(env.server.url, env.patron).connect()
    try:
        await sock.sio.eio.send(raw)
        if raw.startswith("51-"):
            await sock.sio.eio.send(b"the announced attachment")  # else it swallows the next packet
        # No sleep: the server reads one connection's packets in order, so the calls below are
        # handled after the raw packet (and fail if it cost the socket its place).
        # "1" is the client leaving the namespace, "0..." a new CONNECT (refused: bad token):
        # that socket is gone by the client's own doing. Any other packet keeps it.
        if not raw.startswith(("0", "1")):
            await assert_still_works(sock, env)
        other = await Client(env.server.url, env.patron).connect()
        try:
            await assert_still_works(other, env)
        finally:
            await other.close()
    finally:
        await sock.close()
        if sock.sio.eio.state != "disconnected":  # the transport may outlive the namespace
            await sock.sio.eio.disconnect(abort=True)


async def test_socket_many_bad_inputs_then_valid(env: Env, sock: Client) -> None:
    """A burst of bad calls never costs the socket its place: 200 invalid sends, then valid ones."""
    acks = await asyncio.gather(*[sock.call("send", {"conversation_id": env.room, "body": 5, "client_msg_id": f"n{i}"})
                                  for i in range(200)])
    assert all(a["ok"] is False and a["error"]["code"] == "invalid" for a in acks)
    r = await sock.call("send", {"conversation_id": env.room, "body": "still here", "client_msg_id": "burst-ok"})
    assert r["ok"], r  # invalid payloads do not use up the send rate
    await assert_still_works(sock, env)


# ---------------------------------------------------------------- the HTTP matrix

SERVER = {"Authorization": f"Bearer {API_KEY}"}


def _patron_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token('pat', 'Pat')}"}


# (method, path template, valid body, auth) — {room} is filled in.
BODY_ENDPOINTS: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "/api/v1/server/users/u1", {"name": "U One", "avatar_url": "https://a.example/x.png"}, "server"),
    ("PUT", "/api/v1/server/memberships/cre/u2", {"tier_cents": 100, "status": "active"}, "server"),
    ("POST", "/api/v1/server/rooms", {"creator_id": "cre", "name": "R", "min_tier_cents": 0, "post_policy": "everyone"}, "server"),
    ("POST", "/api/v1/server/publish", {"channel": "user:pat", "event": "e", "data": {"x": 1}}, "server"),
    ("POST", "/api/v1/server/notifications", {"user_ids": ["pat"], "type": "t", "title": "T", "body": "B"}, "server"),
    ("POST", "/api/v1/conversations/direct", {"user_id": "cre"}, "client"),
    ("POST", "/api/v1/conversations/{room}/messages", {"body": "hi", "client_msg_id": "http-valid"}, "client"),
    ("PUT", "/api/v1/conversations/{room}/settings", {"muted": False}, "client"),
    ("POST", "/api/v1/devices", {"token": "device-token-1", "platform": "web"}, "client"),
    ("POST", "/api/v1/notifications/read", {"all": True}, "client"),
    # chat spaces (chat/spaces.py)
    ("PATCH", "/api/v1/server/rooms/{room}", {"topic": "t"}, "server"),
    ("POST", "/api/v1/conversations/{room}/guidelines/accept", {"version": 0}, "client"),
]

# field -> wrong values (all invalid), per endpoint index
HTTP_WRONG_FIELDS: dict[int, dict[str, list[Any]]] = {
    0: {"name": [None, 5, {}, [], "", "n" * 201, NESTED], "avatar_url": [5, {}, [], True, "a" * 1001]},
    1: {"tier_cents": [None, "100", -1, 1.5, True, {}, [], 10**10], "status": [None, "ACTIVE", "gone", 1, {}, []]},
    2: {"creator_id": [None, 5, "", "a b", "a" * 65, {}, []], "name": [None, 5, "", {}, "n" * 201],
        "min_tier_cents": [None, "0", -1, 1.5, True, {}], "post_policy": [None, "all", 1, {}, []]},
    3: {"channel": [None, 5, "", {}, []], "event": [None, 5, "", {}, "e" * 65]},
    4: {"user_ids": [None, [], "pat", [5], ["a b"], {}], "type": [None, 5, ""], "title": [None, 5, ""],
        "body": [None, 5, ""], "data": ["x", 5, [1], True], "push": ["yes", 1]},
    5: {"user_id": [None, 5, "", {}, [], True, NESTED]},
    6: {"body": [None, 5, "", "   ", "x" * 4001, {}, [], NESTED], "client_msg_id": [None, 5, "", "a b", "c" * 65, {}, []]},
    7: {"muted": [None, "true", 1, 0, {}, []]},
    8: {"token": [None, 5, "", {}, [], "t" * 513], "platform": [None, "windows", 1, {}, []]},
    9: {"all": [False, "true", 1, {}]},
    10: {"name": [None, 5, "", {}, "n" * 201], "topic": [None, 5, {}, "t" * 501], "emoji": [5, "", ":fire:", "ab", {}],
         "min_tier_cents": [None, "0", -1, 1.5, True, 10**10], "post_policy": [None, "all", 1],
         "archived": [None, "true", 1], "guidelines": [None, 5, {}, "g" * 10_001]},
    11: {"version": [None, "0", -1, 1.5, True, {}, [], 2**31]},
}


def _request(env: Env, method: str, path: str, auth: str, **kw: Any) -> httpx.Response:
    headers = dict(SERVER if auth == "server" else _patron_headers())
    headers.update(kw.pop("headers", {}))
    return env.api.http.request(method, path.replace("{room}", env.room), headers=headers, **kw)


def assert_http_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str)


@pytest.mark.parametrize("i", range(len(BODY_ENDPOINTS)), ids=[f"{m} {p}" for m, p, _, _ in BODY_ENDPOINTS])
def test_http_valid_bodies_work(env: Env, i: int) -> None:
    """The control for the HTTP matrix."""
    method, path, body, auth = BODY_ENDPOINTS[i]
    r = _request(env, method, path, auth, json=body)
    assert 200 <= r.status_code < 300, (r.status_code, r.text)


BAD_BODIES = [b"{", b"not json", b"\xff\xfe\x00", b"{'a': 1}", b'{"a": 1,}', b"", b"   ", b"null", b"[]", b"[{}]",
              b"1", b'"string"', b"true", b'{"a": NaN}', b'{"a":"\\ud800"}', b"[" * 5000 + b"]" * 5000]


@pytest.mark.parametrize("i", range(len(BODY_ENDPOINTS)), ids=[f"{m} {p}" for m, p, _, _ in BODY_ENDPOINTS])
def test_http_bad_json(env: Env, i: int) -> None:
    method, path, _, auth = BODY_ENDPOINTS[i]
    for raw in BAD_BODIES:
        r = _request(env, method, path, auth, content=raw, headers={"Content-Type": "application/json"})
        assert r.status_code == 400, (raw[:20], r.status_code, r.text[:200])
        assert r.json()["error"]["code"] == "invalid", (raw[:20], r.text[:200])


@pytest.mark.parametrize("i", range(len(BODY_ENDPOINTS)), ids=[f"{m} {p}" for m, p, _, _ in BODY_ENDPOINTS])
def test_http_wrong_types(env: Env, i: int) -> None:
    method, path, valid, auth = BODY_ENDPOINTS[i]
    for field, values in HTTP_WRONG_FIELDS[i].items():
        for value in values:
            body = {**valid, field: value}
            r = _request(env, method, path, auth, json=body)
            assert r.status_code == 400, (field, value if not isinstance(value, str) else value[:20], r.text[:200])
            assert r.json()["error"]["code"] == "invalid", r.text


@pytest.mark.parametrize("i", range(len(BODY_ENDPOINTS)), ids=[f"{m} {p}" for m, p, _, _ in BODY_ENDPOINTS])
def test_http_too_large(env: Env, i: int) -> None:
    method, path, valid, auth = BODY_ENDPOINTS[i]
    for size in (64 * 1024 + 1, 200 * 1024, 3 * 1024 * 1024):
        body = {**valid, "padding": "p" * size}
        r = _request(env, method, path, auth, json=body)
        assert_http_error(r, 413, "too_large")
    # The server still answers on a fresh request.
    assert env.api.http.get("/healthz").status_code == 200


@pytest.mark.parametrize("unknown", [u for u in UNKNOWN_IDS if u not in ("", " ", "x" * 60_000)] + ["x" * 2000])
def test_http_unknown_conversation_ids(env: Env, unknown: str) -> None:
    enc = quote(unknown, safe="")
    h = _patron_headers()
    for method, path, body in (("GET", f"/api/v1/conversations/{enc}/messages", None),
                               ("POST", f"/api/v1/conversations/{enc}/messages", {"body": "x", "client_msg_id": "u-1"}),
                               ("PUT", f"/api/v1/conversations/{enc}/settings", {"muted": True})):
        r = env.api.http.request(method, path, json=body, headers=h)
        assert_http_error(r, 404, "not_found")


def test_http_unknown_users_and_paths(env: Env) -> None:
    h = _patron_headers()
    for user_id in ("nobody", "NOBODY", "a" * 64, "a b", "../cre", "cré"):
        r = env.api.http.post("/api/v1/conversations/direct", json={"user_id": user_id}, headers=h)
        assert_http_error(r, 404, "not_found")
    r = env.api.http.post("/api/v1/conversations/direct", json={"user_id": "a" * 65}, headers=h)
    assert r.status_code in (400, 404) and r.json()["error"]["code"] in ("invalid", "not_found"), r.text
    for path in ("/api/v1/nothing", "/api/v2/me", "/api/v1/conversations/1/nothing", "/api/v1/server/nothing"):
        r = env.api.http.get(path, headers=h)
        assert_http_error(r, 404, "not_found")


@pytest.mark.parametrize("query", ["limit=abc", "limit=0", "limit=101", "limit=-1", "limit=1.5", "before_seq=-1",
                                   "before_seq=x", "after_seq=-3", "after_seq=1e3", "limit=99999999999999999999999"])
def test_http_bad_query(env: Env, query: str) -> None:
    r = env.api.http.get(f"/api/v1/conversations/{env.room}/messages?{query}", headers=_patron_headers())
    assert_http_error(r, 400, "invalid")


@pytest.mark.parametrize("method,path", [
    ("POST", "/api/v1/me"), ("DELETE", "/api/v1/conversations"), ("PATCH", "/api/v1/conversations/{room}/messages"),
    ("GET", "/api/v1/conversations/direct"), ("POST", "/api/v1/server/users/u1"), ("PUT", "/api/v1/server/rooms"),
    ("DELETE", "/api/v1/server/memberships/cre/pat"), ("GET", "/api/v1/server/publish"),
    ("POST", "/api/v1/conversations/{room}/settings"), ("GET", "/api/v1/notifications/read"),
])
def test_http_wrong_method(env: Env, method: str, path: str) -> None:
    r = _request(env, method, path, "client", json={})
    assert r.status_code == 405, (r.status_code, r.text)
    assert r.json()["error"]["code"] == "method_not_allowed"  # docs/api.md: an extension of SPEC §5
    assert method not in r.headers["Allow"].split(", ")


def test_http_path_user_ids(env: Env) -> None:
    for bad in ("a%20b", "a" * 65, "%C3%A9", "a%0A", "a.b"):
        r = env.api.http.put(f"/api/v1/server/users/{bad}", json={"name": "X"}, headers=SERVER)
        assert_http_error(r, 400, "invalid")
        r = env.api.http.put(f"/api/v1/server/memberships/cre/{bad}", json={"tier_cents": 1, "status": "active"},
                             headers=SERVER)
        assert_http_error(r, 400, "invalid")
