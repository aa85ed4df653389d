"""The OpenAPI 3.1 document at /api/v1/openapi.json is kept true (docs/reliability.md):

- every route the app registers is documented, and every documented operation is registered;
- every example in it validates against its own schema;
- one valid call of every operation on a real server answers a documented status with a body
  that validates against the documented schema;
- schemathesis generates requests from it (valid and invalid, a bounded number per operation)
  against one real server process on MariaDB + Redis: no 500, every answer documented
  (status, content type, schema).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import engineio.packet
import httpx
import jsonschema_rs
import pytest
import schemathesis
import socketio.packet
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, given, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from chat.app import create_app
from chat.config import Settings
from tests.conftest import MySQLDatabases
from tests.support import API_KEY, Api, ServerProcess, fetch, make_token, sync_engine
from webhooks.models import WebhookOutbox

# Not part of the HTTP API: the page's static files and python-engineio's endpoint.
UNDOCUMENTED_PREFIXES = ("/static", "/socket.io/")
POSITIVE_EXAMPLES = 25  # per operation; about 30 s for the whole document
NEGATIVE_EXAMPLES = 15


@dataclass
class Env:
    server: ServerProcess
    api: Api
    doc: dict[str, Any]
    room: str
    creator_token: str
    patron_token: str
    message_id: str


@pytest.fixture(scope="module")
def env(mysql_databases: MySQLDatabases, redis_url: str, redis_prefix_root: str) -> Iterator[Env]:
    server = ServerProcess(mysql_databases.new(), redis_url, f"{redis_prefix_root}-openapi")
    api = Api(server.url)
    try:
        creator = api.user("cre", "Cre")
        patron = api.user("pat", "Pat")
        api.membership("cre", "pat", 500)
        room = api.room("cre", "Lounge", 0)
        r = api.client(creator, "POST", f"/conversations/{room}/messages", json={"body": "hi", "client_msg_id": "oa-0"})
        assert r.status_code == 201, r.text
        doc = fetch("GET", server.url + "/api/v1/openapi.json", timeout=10).json()
        yield Env(server, api, doc, room, creator, patron, r.json()["message"]["id"])
    finally:
        api.close()
        server.stop()


def registered_operations() -> set[tuple[str, str]]:
    # Creating the app sets python-socketio's packet codec process-wide (orjson, which refuses
    # integers over 64 bits): put back the one this process's test clients use.
    codecs = socketio.packet.Packet.json, engineio.packet.Packet.json
    try:
        app = create_app(Settings(jwt_secret="x" * 32))
    finally:
        socketio.packet.Packet.json, engineio.packet.Packet.json = codecs
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD", "*") or path.startswith(UNDOCUMENTED_PREFIXES):
            continue
        out.add((route.method.lower(), path))
    return out


def documented_operations(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, item in doc["paths"].items() for method in item}


def test_every_route_documented_and_vice_versa(env: Env) -> None:
    assert env.doc["openapi"].startswith("3.1")
    registered, documented = registered_operations(), documented_operations(env.doc)
    assert registered - documented == set(), "registered but not documented"
    assert documented - registered == set(), "documented but not registered"


def _validator(doc: dict[str, Any], schema: dict[str, Any]) -> Any:
    return jsonschema_rs.Draft202012Validator({**schema, "components": doc["components"]})


def test_examples_validate_against_their_schemas(env: Env) -> None:
    checked = 0
    for path, item in env.doc["paths"].items():
        for method, op in item.items():
            media = []
            if "requestBody" in op:
                media += list(op["requestBody"]["content"].values())
            for response in op["responses"].values():
                media += list(response.get("content", {}).values())
            for m in media:
                if "example" in m:
                    errors = [e.message for e in _validator(env.doc, m["schema"]).iter_errors(m["example"])]
                    assert errors == [], (method, path, errors)
                    checked += 1
    assert checked >= 60, checked


def _check_answer(env: Env, method: str, path: str, r: httpx.Response) -> None:
    op = env.doc["paths"][path][method]
    assert str(r.status_code) in op["responses"], (method, path, r.status_code, r.text[:300])
    for name, header in op["responses"][str(r.status_code)].get("headers", {}).items():
        assert name in r.headers, (method, path, r.status_code, name)
        errors = [e.message for e in _validator(env.doc, header["schema"]).iter_errors(r.headers[name])]
        assert errors == [], (method, path, name, errors)
    content = op["responses"][str(r.status_code)].get("content")
    if content is None:
        assert r.content == b"", (method, path, r.text[:300])
        return
    if "application/json" in content:
        assert r.headers["content-type"].startswith("application/json"), r.headers
        errors = [e.message for e in _validator(env.doc, content["application/json"]["schema"]).iter_errors(r.json())]
        assert errors == [], (method, path, errors, r.text[:500])


def _failed_delivery(env: Env) -> int:
    """A failed webhook delivery in the server's database (this server sends no webhooks)."""
    now = datetime.now(UTC)
    row = {"event_id": f"evt_oa{time.time_ns()}", "event_type": "member.blocked", "body": "{}", "status": "failed",
           "attempts": 3, "next_attempt_at": now, "last_status": 503, "last_error": "gave up", "window_start": now,
           "created_at": now, "updated_at": now}
    engine = sync_engine(env.server.database_url)
    try:
        with engine.begin() as conn:
            return int(conn.execute(sa.insert(WebhookOutbox.__table__).values(**row)).inserted_primary_key[0])
    finally:
        engine.dispose()


def test_real_answers_match_the_document(env: Env) -> None:
    """One valid call of every operation; its answer is documented and matches its schema."""
    server = {"Authorization": f"Bearer {API_KEY}"}
    cre = {"Authorization": f"Bearer {env.creator_token}"}
    pat = {"Authorization": f"Bearer {env.patron_token}"}
    h = env.api.http
    sent = env.api.client(env.patron_token, "POST", f"/conversations/{env.room}/messages",
                          {"body": "to delete", "client_msg_id": f"oa-del-{time.time_ns()}"})
    assert sent.status_code == 201, sent.text
    message_id = sent.json()["message"]["id"]
    doomed = env.api.room("cre", "Doomed")  # changed, then deleted (chat spaces)
    calls: list[tuple[str, str, str, dict[str, str], Any]] = [
        ("put", "/api/v1/server/users/{user_id}", "/api/v1/server/users/oa1", server, {"name": "Oa", "avatar_url": None}),
        ("put", "/api/v1/server/memberships/{creator_id}/{patron_id}", "/api/v1/server/memberships/cre/oa1", server,
         {"tier_cents": 100, "status": "active"}),
        ("post", "/api/v1/server/rooms", "/api/v1/server/rooms", server,
         {"creator_id": "cre", "name": "R2", "min_tier_cents": 0, "post_policy": "everyone", "external_id": "r2"}),
        ("get", "/api/v1/server/rooms", "/api/v1/server/rooms?creator_id=cre&limit=1", server, None),
        ("get", "/api/v1/server/rooms/{conversation_id}", f"/api/v1/server/rooms/{env.room}", server, None),
        ("patch", "/api/v1/server/rooms/{conversation_id}", f"/api/v1/server/rooms/{doomed}", server,
         {"topic": "Say hi", "emoji": "🎸", "guidelines": "Be kind.", "archived": True}),
        ("delete", "/api/v1/server/rooms/{conversation_id}", f"/api/v1/server/rooms/{doomed}", server, None),
        ("delete", "/api/v1/server/messages/{message_id}", f"/api/v1/server/messages/{message_id}", server, None),
        ("get", "/api/v1/server/conversations/{conversation_id}/messages",
         f"/api/v1/server/conversations/{env.room}/messages?since_seq=0&limit=5", server, None),
        ("get", "/api/v1/server/conversations/{conversation_id}/presence",
         f"/api/v1/server/conversations/{env.room}/presence", server, None),
        ("get", "/api/v1/server/channels/{channel}/presence", "/api/v1/server/channels/creator:cre/presence", server,
         None),
        ("post", "/api/v1/server/users/{user_id}/disconnect", "/api/v1/server/users/oa1/disconnect", server, None),
        ("post", "/api/v1/server/publish", "/api/v1/server/publish", server,
         {"channel": "user:pat", "event": "e", "data": {"x": [1, 2]}}),
        ("put", "/api/v1/server/creators/{creator_id}/moderators/{user_id}", "/api/v1/server/creators/cre/moderators/oa1",
         server, None),
        ("get", "/api/v1/server/creators/{creator_id}/moderators", "/api/v1/server/creators/cre/moderators", server, None),
        ("delete", "/api/v1/server/creators/{creator_id}/moderators/{user_id}",
         "/api/v1/server/creators/cre/moderators/oa1", server, None),
        ("put", "/api/v1/server/creators/{creator_id}/timeouts/{user_id}", "/api/v1/server/creators/cre/timeouts/oa1",
         server, {"minutes": 5, "reason": "calm"}),
        ("delete", "/api/v1/server/creators/{creator_id}/timeouts/{user_id}",
         "/api/v1/server/creators/cre/timeouts/oa1", server, None),
        ("put", "/api/v1/server/creators/{creator_id}/blocks/{user_id}", "/api/v1/server/creators/cre/blocks/oa1",
         server, {"reason": "abuse"}),
        ("delete", "/api/v1/server/creators/{creator_id}/blocks/{user_id}", "/api/v1/server/creators/cre/blocks/oa1",
         server, None),
        ("put", "/api/v1/server/rooms/{conversation_id}/slow-mode", f"/api/v1/server/rooms/{env.room}/slow-mode",
         server, {"seconds": 0}),
        ("put", "/api/v1/server/messages/{message_id}/pin", f"/api/v1/server/messages/{env.message_id}/pin", server,
         None),
        ("delete", "/api/v1/server/messages/{message_id}/pin", f"/api/v1/server/messages/{env.message_id}/pin", server,
         None),
        ("get", "/api/v1/server/creators/{creator_id}/moderation-log",
         "/api/v1/server/creators/cre/moderation-log?limit=2", server, None),
        ("get", "/api/v1/server/creators/{creator_id}/reports", "/api/v1/server/creators/cre/reports?status=all",
         server, None),
        ("put", "/api/v1/server/creators/{creator_id}/report-settings", "/api/v1/server/creators/cre/report-settings",
         server, {"hide_threshold": 3}),
        ("get", "/api/v1/server/creators/{creator_id}/report-settings", "/api/v1/server/creators/cre/report-settings",
         server, None),
        ("post", "/api/v1/server/messages/{message_id}/review", f"/api/v1/server/messages/{env.message_id}/review",
         server, {"action": "dismiss"}),
        ("get", "/api/v1/server/users/{user_id}/blocks", "/api/v1/server/users/pat/blocks", server, None),
        ("post", "/api/v1/server/notifications", "/api/v1/server/notifications", server,
         {"user_ids": ["pat"], "type": "t", "title": "T", "body": "B", "data": {"k": "v"}}),
        ("get", "/api/v1/server/webhooks/deliveries", "/api/v1/server/webhooks/deliveries?status=failed&limit=5",
         server, None),
        ("post", "/api/v1/server/webhooks/deliveries/{delivery_id}/replay",
         f"/api/v1/server/webhooks/deliveries/{_failed_delivery(env)}/replay", server, None),
        ("post", "/api/v1/conversations/{conversation_id}/messages", f"/api/v1/conversations/{env.room}/messages", pat,
         {"body": "hello @cre", "client_msg_id": f"oa-{time.time_ns()}", "mentions": ["pat", "nobody"]}),
        ("get", "/api/v1/conversations/{conversation_id}/members",
         f"/api/v1/conversations/{env.room}/members?q=c&limit=5", pat, None),
        ("get", "/api/v1/conversations/{conversation_id}/messages",
         f"/api/v1/conversations/{env.room}/messages?limit=5", pat, None),
        ("get", "/api/v1/conversations/{conversation_id}/messages/{message_id}/reactions",
         f"/api/v1/conversations/{env.room}/messages/{env.message_id}/reactions?limit=5", pat, None),
        ("post", "/api/v1/conversations/{conversation_id}/guidelines/accept",
         f"/api/v1/conversations/{env.room}/guidelines/accept", pat, {"version": 0}),
        ("get", "/api/v1/me", "/api/v1/me", pat, None),
        ("get", "/api/v1/moderation", "/api/v1/moderation", cre, None),
        ("get", "/api/v1/conversations", "/api/v1/conversations", pat, None),
        ("post", "/api/v1/conversations/direct", "/api/v1/conversations/direct", cre, {"user_id": "pat"}),
        ("put", "/api/v1/conversations/{conversation_id}/settings", f"/api/v1/conversations/{env.room}/settings", pat,
         {"muted": True}),
        ("get", "/api/v1/notifications", "/api/v1/notifications?limit=5", pat, None),
        ("post", "/api/v1/notifications/read", "/api/v1/notifications/read", pat, {"all": True}),
        ("post", "/api/v1/devices", "/api/v1/devices", pat, {"token": "dev-1", "platform": "web"}),
        ("delete", "/api/v1/devices/{token}", "/api/v1/devices/dev-1", pat, None),
        ("get", "/healthz", "/healthz", {}, None),
        ("get", "/readyz", "/readyz", {}, None),
        ("get", "/metrics", "/metrics", {}, None),
        ("get", "/api/v1/openapi.json", "/api/v1/openapi.json", {}, None),
        ("get", "/api/v1/asyncapi.json", "/api/v1/asyncapi.json", {}, None),
        ("get", "/", "/", {}, None),
    ]
    photos = [("post", "/api/v1/uploads"), ("get", "/api/v1/attachments/{attachment_id}"),
              ("get", "/api/v1/attachments/{attachment_id}/thumb")]
    assert {(m, p) for m, p, *_ in calls} | set(photos) == documented_operations(env.doc)
    for method, path, url, headers, body in calls:
        r = h.request(method.upper(), url, headers=headers, json=body)
        assert r.status_code < 300, (method, url, r.status_code, r.text[:300])
        _check_answer(env, method, path, r)
    # Photos: a multipart upload, then the signed URLs of the message that carries it.
    image = io.BytesIO()
    Image.new("RGB", (40, 30), "red").save(image, "JPEG")
    r = h.post("/api/v1/uploads", headers=pat, files={"file": ("a.jpg", image.getvalue(), "image/jpeg")})
    assert r.status_code == 201, r.text
    _check_answer(env, *photos[0], r)
    r = h.post(f"/api/v1/conversations/{env.room}/messages", headers=pat,
               json={"client_msg_id": f"oa-photo-{time.time_ns()}", "attachments": [r.json()["attachment"]["id"]]})
    assert r.status_code == 201, r.text
    _check_answer(env, "post", "/api/v1/conversations/{conversation_id}/messages", r)
    attachment = r.json()["message"]["attachments"][0]
    for (method, path), url in zip(photos[1:], (attachment["url"], attachment["thumb_url"]), strict=True):
        r = h.get(url)
        assert r.status_code == 200 and r.headers["content-type"] in env.doc["paths"][path][method]["responses"]["200"]["content"]
        _check_answer(env, method, path, r)
    # And the error answers: one of each kind the document promises.
    for method, url, path, headers, body in [
        ("put", "/api/v1/server/users/oa1", "/api/v1/server/users/{user_id}", {}, {"name": "x"}),
        ("put", "/api/v1/server/users/oa1", "/api/v1/server/users/{user_id}", server, {"name": 5}),
        ("get", "/api/v1/conversations/999999/messages", "/api/v1/conversations/{conversation_id}/messages", pat, None),
        ("post", "/api/v1/server/rooms", "/api/v1/server/rooms", server,  # the same external_id: 200, the room
         {"creator_id": "cre", "name": "R2 again", "min_tier_cents": 0, "external_id": "r2"}),
    ]:
        r = h.request(method.upper(), url, headers=headers, json=body)
        assert r.status_code >= 400 or "again" in str(body)
        _check_answer(env, method, path, r)
    # a 429, with its documented headers: bursts over the per-user budget (20 in any 2 s)
    def send(i: int) -> httpx.Response:
        return h.post(f"/api/v1/conversations/{env.room}/messages", headers=cre,
                      json={"body": "burst", "client_msg_id": f"oa-burst-{i}-{time.time_ns()}"})

    limited = None
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            answers = list(pool.map(send, range(30)))
            for r in answers:
                _check_answer(env, "post", "/api/v1/conversations/{conversation_id}/messages", r)
            limited = next((r for r in answers if r.status_code == 429), None)
            if limited is not None:
                break
    assert limited is not None, "150 sends without a 429"


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def _fuzz(env: Env, operation: Any, mode: Any, count: int, headers: dict[str, str]) -> int:
    """Run `count` generated cases of one operation; returns how many requests were sent."""
    calls = 0

    @settings(max_examples=count, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        nonlocal calls
        calls += 1
        case.call_and_validate(base_url=env.server.url, headers=headers, checks=CHECKS)

    run()
    return calls


def _describe(exc: BaseException) -> str:
    """The failure and, for Hypothesis' flaky/grouped errors, what each inner failure was."""
    text = str(exc)[:1500]
    for inner in getattr(exc, "exceptions", ()) or ():
        cause = inner.__cause__ or inner.__context__ or (inner.args[0] if inner.args else None)
        text += f"\n  - {type(inner).__name__}: {str(inner)[:500]} <- {type(cause).__name__}: {str(cause)[:1000]}"
    return text


@pytest.mark.timeout(600)  # ~50 s alone; several minutes next to other test workers on 2 busy cores
def test_schemathesis(env: Env) -> None:
    """Schemathesis against the live server: valid and invalid requests for every operation."""
    schema = schemathesis.openapi.from_url(env.server.url + "/api/v1/openapi.json")
    auth = {"apiKey": f"Bearer {API_KEY}", "clientJwt": f"Bearer {make_token('pat', 'Pat')}"}
    failures: list[str] = []
    calls = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        security = operation.definition.raw.get("security") or []
        headers = {"Authorization": auth[next(iter(security[0]))]} if security else {}
        modes = [(schemathesis.GenerationMode.POSITIVE, POSITIVE_EXAMPLES)]
        if operation.definition.raw.get("parameters") or "requestBody" in operation.definition.raw:
            modes.append((schemathesis.GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES))  # else nothing to break
        for mode, count in modes:
            try:
                calls += _fuzz(env, operation, mode, count, headers)
            except (Exception, BaseExceptionGroup) as exc:  # collect every operation's failure, then report them all
                failures.append(f"{operation.label} [{mode.value}]: {_describe(exc)}")
    assert failures == [], "\n\n".join(failures)
    print("schemathesis calls:", calls)
    assert calls >= 100, calls
    log = env.server.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-4000:]
