"""The AsyncAPI 3.0 document at /api/v1/asyncapi.json is kept true by real traffic:

- real Socket.IO clients on both processes of the MariaDB + Redis cluster go through every event
  of the protocol (connect, a refused connect, join, send, typing, read, edit, delete, history,
  subscribe, publish, notification, refresh_token, react, resync, leave, revocation, token expiry, and
  error acks); every packet is recorded both ways at the client's packet layer;
- each recorded payload is validated against the schema the served document gives its event
  (client events, their acknowledgements by ack id, server events, the CONNECT auth and the
  CONNECT_ERROR data); an event the document does not list fails the test;
- every operation of the document occurs in the traffic, and the requests sent invalid on
  purpose are exactly the ones its schemas reject (and the server answered `ok: false`);
- the document is well-formed: its references resolve, its examples validate, and its client
  events are the ones the server registers handlers for (chat/sockets.py CLIENT_EVENTS).
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Any

import jsonschema_rs
import orjson
import pytest
import redis.asyncio as aioredis
import socketio
from PIL import Image
from socketio import packet

from chat.keys import RedisKeys
from chat.sockets import CLIENT_EVENTS
from tests.conftest import Cluster
from tests.support import Client, fetch, make_token


@dataclass
class Frame:
    label: str
    direction: str  # "out": client -> server, "in": server -> client
    type: int
    id: int | None
    data: Any


class RecordingSocket(socketio.AsyncClient):  # type: ignore[misc]
    """socketio.AsyncClient that appends every Socket.IO packet it sends or receives to `frames`."""

    def __init__(self, frames: list[Frame], label: str) -> None:
        super().__init__(reconnection=False)
        self.frames, self.label = frames, label

    async def _send_packet(self, pkt: Any) -> None:
        self.frames.append(Frame(self.label, "out", pkt.packet_type, pkt.id, copy.deepcopy(pkt.data)))
        await super()._send_packet(pkt)

    async def _handle_eio_message(self, data: Any) -> None:
        pkt = self.packet_class(encoded_packet=data)
        self.frames.append(Frame(self.label, "in", pkt.packet_type, pkt.id, copy.deepcopy(pkt.data)))
        await super()._handle_eio_message(data)


class RecordingClient(Client):
    def __init__(self, url: str, token: str, frames: list[Frame], label: str) -> None:
        super().__init__(url, token)
        self.sio = RecordingSocket(frames, label)
        self.sio.on("*", self._record)


# ---------------------------------------------------------------- the document as a contract


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow $ref (local JSON pointers) until a node without one."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and not set(node) - {"$ref"}:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        node = doc
        for part in ref[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        seen += 1
        assert seen < 10, "reference loop"
    return node


class Contract:
    """What the served document says: the schema of each client event, of its ack, of each server
    event, of the CONNECT auth and of CONNECT_ERROR."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.client: dict[str, Any] = {}
        self.acks: dict[str, Any] = {}
        self.server: dict[str, Any] = {}
        self.connect: Any = None
        self.connect_error: Any = None
        for op_id, op in doc["operations"].items():
            assert resolve(doc, op["channel"]) is doc["channels"]["socket"], op_id
            (msg_ref,) = op["messages"]
            msg = resolve(doc, msg_ref)
            assert msg_ref["$ref"].startswith("#/channels/socket/messages/"), op_id
            validator = self.validator(msg["payload"])
            name = msg["name"]
            if msg.get("x-socketio-packet") == "CONNECT":
                (reply,) = op["reply"]["messages"]
                self.connect, self.connect_error = validator, self.validator(resolve(doc, reply)["payload"])
            elif op["action"] == "receive":
                assert name not in self.client, f"{name} twice"
                (reply,) = op["reply"]["messages"]
                assert reply["$ref"].startswith(op["reply"]["channel"]["$ref"] + "/messages/"), op_id
                self.client[name] = validator
                ack = resolve(doc, reply)["payload"]
                self.acks[name] = (self.validator(ack), [self.validator(branch) for branch in ack["oneOf"]])
            else:
                assert op["action"] == "send" and name not in self.server, op_id
                self.server[name] = validator

    def validator(self, schema: dict[str, Any]) -> Any:
        return jsonschema_rs.Draft202012Validator({**schema, "components": self.doc["components"]})


def errors_of(validator: Any, value: Any) -> list[str]:
    return [f"{e.message} at {list(e.instance_path)}" for e in validator.iter_errors(value)]


@dataclass
class Verdict:
    problems: list[str]
    rejected_requests: list[tuple[str, Any]]  # client events whose payload the document rejects
    seen_client: set[str]
    seen_acks: set[str]
    seen_server: set[str]
    seen_connect_error: bool


def check_traffic(contract: Contract, frames: list[Frame]) -> Verdict:
    problems: list[str] = []
    rejected: list[tuple[str, Any]] = []
    pending: dict[tuple[str, int], tuple[str, bool]] = {}
    v = Verdict(problems, rejected, set(), set(), set(), False)
    for f in frames:
        where = f"{f.label} {f.direction} {packet.packet_names[f.type]}"
        if f.direction == "out" and f.type == packet.CONNECT:
            problems += [f"{where}: {e}" for e in errors_of(contract.connect, f.data)]
        elif f.direction == "out" and f.type == packet.EVENT:
            name, *args = f.data
            if name not in contract.client:
                problems.append(f"{where}: client event {name!r} is not in the document")
                continue
            v.seen_client.add(name)
            payload = args[0] if len(args) == 1 else args
            bad = errors_of(contract.client[name], payload) if len(args) == 1 else ["not exactly one argument"]
            if bad:
                rejected.append((name, payload))
            if f.id is not None:
                pending[(f.label, f.id)] = (name, bool(bad))
        elif f.direction == "in" and f.type == packet.ACK:
            key = (f.label, f.id if f.id is not None else -1)
            if key not in pending:
                problems.append(f"{where}: ack {f.id} answers no event sent")
                continue
            name, sent_invalid = pending.pop(key)
            v.seen_acks.add(name)
            (ack,) = f.data
            whole, (ok_branch, error_branch) = contract.acks[name]
            if errors_of(whole, ack):  # say why, from the branch its `ok` picks
                branch = ok_branch if isinstance(ack, dict) and ack.get("ok") is True else error_branch
                problems += [f"{where}: {name} ack: {e} in {str(ack)[:300]}" for e in errors_of(branch, ack) or ["oneOf"]]
            if sent_invalid and ack.get("ok") is not False:
                problems.append(f"{where}: {name} sent invalid but acked {ack}")
        elif f.direction == "in" and f.type == packet.EVENT:
            name, *args = f.data
            if name not in contract.server:
                problems.append(f"{where}: server event {name!r} is not in the document: {args}")
                continue
            v.seen_server.add(name)
            if len(args) != 1:
                problems.append(f"{where}: {name} has {len(args)} arguments")
                continue
            problems += [f"{where}: {name}: {e} in {str(args[0])[:300]}" for e in errors_of(contract.server[name], args[0])]
        elif f.direction == "in" and f.type == packet.CONNECT_ERROR:
            v.seen_connect_error = True
            problems += [f"{where}: {e}" for e in errors_of(contract.connect_error, f.data)]
        elif f.type in (packet.CONNECT, packet.DISCONNECT):
            pass  # the server's CONNECT {sid}, and disconnects: Socket.IO itself
        else:
            problems.append(f"{where}: unexpected packet {f.data!r}")
    problems += [f"{label}: no ack for {name} (id {i})" for (label, i), (name, _) in pending.items()]
    return v


# ---------------------------------------------------------------- the test


async def test_document_is_well_formed(shared_sqlite: Cluster) -> None:
    r = fetch("GET", shared_sqlite.servers[0].url + "/api/v1/asyncapi.json", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json")
    doc = r.json()
    assert doc["asyncapi"] == "3.0.0"
    contract = Contract(doc)
    for key, msg in doc["components"]["messages"].items():
        for example in msg.get("examples", []):
            assert not errors_of(contract.validator(msg["payload"]), example["payload"]), key
    for channel in doc["channels"].values():
        for msg in channel["messages"].values():
            assert "payload" in resolve(doc, msg)
    # every event the server handles is documented, and every documented client event is handled
    assert set(CLIENT_EVENTS) == set(contract.client)


async def test_real_traffic_matches_the_document(shared_mysql_cluster: Cluster, redis_url: str, uid: Any) -> None:
    cluster = shared_mysql_cluster
    url0, url1 = cluster.servers[0].url, cluster.servers[1].url
    api = cluster.api
    cre, pat, late = uid("cre"), uid("pat"), uid("late")
    cre_token, pat_token = api.user(cre), api.user(pat)
    api.user(late)
    api.membership(cre, pat, 500)
    room = api.room(cre, "Lounge", 100)
    contract = Contract(fetch("GET", url0 + "/api/v1/asyncapi.json", timeout=10).json())

    frames: list[Frame] = []
    a = RecordingClient(url0, pat_token, frames, "patron@0")
    b = RecordingClient(url1, cre_token, frames, "creator@1")
    refused = RecordingClient(url1, "not-a-token", frames, "refused@1")
    control = aioredis.Redis.from_url(redis_url)
    extra: list[RecordingClient] = []
    try:
        await a.connect()
        await b.connect()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await refused.connect()

        assert (await b.call("join", {"conversation_id": room}))["ok"]
        assert (await a.call("join", {"conversation_id": room}))["ok"]
        await b.wait_for("presence", lambda p: p["user_id"] == pat and p["online"])
        assert (await a.call("subscribe", {"channel": f"creator:{cre}"}))["ok"]

        sent = await a.call("send", {"conversation_id": room, "body": "hello", "client_msg_id": "m-1"})
        msg = sent["message"]
        await b.wait_for("message", lambda m: m["id"] == msg["id"])
        assert (await a.call("react", {"message_id": msg["id"], "emoji": "👍", "on": True}))["ok"]
        await b.wait_for("reaction", lambda r: r["message_id"] == msg["id"])
        assert (await a.call("typing", {"conversation_id": room, "typing": True}))["ok"]
        await b.wait_for("typing", lambda t: t["user_id"] == pat)
        assert (await b.call("read", {"conversation_id": room, "seq": msg["seq"]}))["ok"]
        await a.wait_for("read", lambda r: r["user_id"] == cre)
        assert (await a.call("edit", {"message_id": msg["id"], "body": "hello again"}))["ok"]
        await b.wait_for("message_updated", lambda m: m["edited_at"] is not None)
        assert (await a.call("delete", {"message_id": msg["id"]}))["ok"]
        await b.wait_for("message_updated", lambda m: m["deleted"])
        # A photo message (no text): its `attachments` are checked against the document too.
        image = io.BytesIO()
        Image.new("RGB", (32, 24), "blue").save(image, "JPEG")
        up = fetch("POST", url0 + "/api/v1/uploads", files={"file": ("a.jpg", image.getvalue(), "image/jpeg")},
                        headers={"Authorization": f"Bearer {pat_token}"}, timeout=10)
        assert up.status_code == 201, up.text
        photo = await a.call("send", {"conversation_id": room, "client_msg_id": "m-photo",
                                      "attachments": [up.json()["attachment"]["id"]]})
        assert photo["ok"] and len(photo["message"]["attachments"]) == 1, photo
        await b.wait_for("message", lambda m: m["id"] == photo["message"]["id"] and m["attachments"])
        assert (await a.call("history", {"conversation_id": room, "before_seq": 2, "limit": 10}))["ok"]
        assert (await a.call("join", {"conversation_id": room, "since_seq": 0}))["ok"]
        direct = api.direct(pat_token, cre)
        assert (await a.call("join", {"conversation_id": direct}))["ok"]  # a conversation with members

        assert api.server("POST", "/publish", {"channel": f"creator:{cre}", "event": "live",
                                               "data": {"url": "https://example.com"}}).status_code == 200
        await a.wait_for("event", lambda e: e["event"] == "live")
        assert api.server("POST", "/notifications", {"user_ids": [pat], "type": "hello", "title": "Hi",
                                                     "body": "there"}).status_code == 202
        await a.wait_for("notification")
        assert (await a.call("refresh_token", {"token": make_token(pat, ttl=7200)}))["ok"]
        # what a process announces when its relay publishing works again: every process resyncs
        await control.publish(RedisKeys(cluster.redis_prefix).control_channel, orjson.dumps({"type": "relay_resync"}))
        await a.wait_for("resync", lambda r: r["conversation_id"] == room)
        assert (await a.call("unsubscribe", {"channel": f"creator:{cre}"}))["ok"]
        assert (await a.call("leave", {"conversation_id": room}))["ok"]
        await b.wait_for("presence", lambda p: p["user_id"] == pat and not p["online"])

        # failures are acks too: schema-valid requests the server refuses, and invalid ones
        assert (await a.call("join", {"conversation_id": "999999999"}))["error"]["code"] == "not_found"
        assert (await a.call("send", {"conversation_id": room, "body": "  ", "client_msg_id": "m-2"}))["ok"] is False
        assert (await a.call("typing", {"conversation_id": room, "typing": "yes"}))["ok"] is False

        # moderation: appoint, time out (a refused send), lift, read the log, block (access_revoked), unblock
        assert (await b.call("moderator", {"user_id": late, "on": True}))["ok"]
        assert (await b.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 5, "reason": "calm"}))["ok"]
        await a.wait_for("moderation", lambda e: e["action"] == "timeout")
        muted = await a.call("send", {"conversation_id": room, "body": "muted", "client_msg_id": "m-3"})
        assert muted["error"]["retry_after"] > 0
        assert (await b.call("timeout", {"creator_id": cre, "user_id": pat, "minutes": 0}))["ok"]
        assert (await b.call("moderation_log", {"creator_id": cre, "limit": 5}))["ok"]
        assert (await a.call("join", {"conversation_id": room}))["ok"]
        assert (await b.call("slow_mode", {"conversation_id": room, "seconds": 60}))["ok"]
        await a.wait_for("slow_mode", lambda e: e["seconds"] == 60)
        assert (await a.call("send", {"conversation_id": room, "body": "slow", "client_msg_id": "m-4"}))["ok"]
        slowed = await a.call("send", {"conversation_id": room, "body": "slower", "client_msg_id": "m-5"})
        assert slowed["error"]["code"] == "rate_limited" and slowed["error"]["retry_after"] > 0
        assert (await b.call("slow_mode", {"conversation_id": room, "seconds": 0}))["ok"]
        # chat spaces: new guidelines (a refused send, then accepted), a deleted room
        assert api.server("PATCH", f"/rooms/{room}", {"guidelines": "Be kind."}).status_code == 200
        await a.wait_for("conversation_updated", lambda e: e["guidelines_version"] == 1)
        unaccepted = await a.call("send", {"conversation_id": room, "body": "rules?", "client_msg_id": "m-6"})
        assert unaccepted["error"]["reason"] == "guidelines"
        assert (await a.call("accept_guidelines", {"conversation_id": room, "version": 1}))["ok"]
        doomed = api.room(cre, "Doomed", 0)
        assert (await a.call("join", {"conversation_id": doomed}))["ok"]
        assert api.server("DELETE", f"/rooms/{doomed}").status_code == 200
        await a.wait_for("conversation_deleted", lambda e: e["conversation_id"] == doomed)
        await a.wait_for("access_revoked", lambda e: e["conversation_id"] == doomed)
        pinned = (await b.call("send", {"conversation_id": room, "body": "pin me", "client_msg_id": "c-pin"}))["message"]
        assert (await b.call("pin", {"message_id": pinned["id"], "on": True}))["ok"]
        await a.wait_for("pins", lambda e: e["message_ids"] == [pinned["id"]])
        assert (await a.call("join", {"conversation_id": room}))["pinned"][0]["id"] == pinned["id"]
        # reports (threshold 1: the first one hides) and blocks between members
        assert api.server("PUT", f"/creators/{cre}/report-settings", {"hide_threshold": 1}).status_code == 200
        reported = (await b.call("send", {"conversation_id": room, "body": "report me", "client_msg_id": "c-rep"}))
        rid = reported["message"]["id"]
        assert (await a.call("report", {"message_id": rid, "reason": "spam", "note": "test"}))["ok"]
        await b.wait_for("report_opened", lambda e: e["report"]["message_id"] == rid)
        await a.wait_for("message_hidden", lambda e: e["message_id"] == rid and e["hidden"])
        assert (await b.call("reports", {"status": "open"}))["reports"][0]["message_id"] == rid
        assert (await b.call("review_report", {"message_id": rid, "action": "dismiss"}))["resolved"] == 1
        await b.wait_for("report_resolved", lambda e: e["message_id"] == rid)
        await a.wait_for("message_hidden", lambda e: e["message_id"] == rid and not e["hidden"])
        assert (await a.call("block_user", {"user_id": cre, "on": True}))["ok"]
        await a.wait_for("user_blocked", lambda e: e["blocked"])
        unseen = (await b.call("send", {"conversation_id": room, "body": "unseen", "client_msg_id": "c-unseen"}))
        await a.wait_for("message", lambda m: m["id"] == unseen["message"]["id"] and m.get("hidden"))
        assert len((await a.call("blocks", {}))["blocks"]) == 1
        assert (await a.call("block_user", {"user_id": cre, "on": False}))["ok"]
        assert (await b.call("block", {"creator_id": cre, "user_id": pat, "on": True, "reason": "test"}))["ok"]
        await a.wait_for("access_revoked", lambda r: r["conversation_id"] == room)
        await a.wait_for("moderation", lambda e: e["action"] == "block")
        assert (await b.call("block", {"creator_id": cre, "user_id": pat, "on": False}))["ok"]
        await a.wait_for("moderation", lambda e: e["action"] == "unblock")
        a.events["access_revoked"].clear()

        assert (await a.call("join", {"conversation_id": room}))["ok"]
        api.membership(cre, pat, 500, status="former")
        await a.wait_for("access_revoked", lambda r: r["conversation_id"] == room)

        # a token that lives just long enough to connect (exp has whole seconds: 3-4 s from now)
        expiring = RecordingClient(url0, make_token(late, ttl=4), frames, "expiring@0")
        extra.append(expiring)
        await expiring.connect()
        await expiring.wait_for("token_expired")
    finally:
        await control.aclose()
        for c in (a, b, refused, *extra):
            await c.close()

    verdict = check_traffic(contract, frames)
    assert not verdict.problems, "\n".join(verdict.problems)
    assert verdict.rejected_requests == [("send", {"conversation_id": room, "body": "  ", "client_msg_id": "m-2"}),
                                         ("typing", {"conversation_id": room, "typing": "yes"})]
    assert verdict.seen_client == set(contract.client) == verdict.seen_acks
    assert verdict.seen_server == set(contract.server)
    assert verdict.seen_connect_error
