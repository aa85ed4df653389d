"""Offline FCM for tests and the benchmark: a fake Google OAuth2 token endpoint and FCM HTTP v1
send endpoint (aiohttp), run in a thread with its own event loop.

The real firebase-admin SDK talks to it through two hooks: a service-account JSON whose
`token_uri` is the fake's /token (see `write_service_account`), and FCM_ENDPOINT (which
notifications.fcm turns into the SDK's _MessagingService.FCM_URL).

Never run it on the sender's loop: google-auth fetches the OAuth token with a blocking
`requests` call.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt as google_jwt

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
# FCM ErrorCode -> (HTTP status, google.rpc status, message)
FCM_ERRORS = {
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
    "INVALID_PAYLOAD": (400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'"),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
}
HTML_502 = "<html><head><title>502 Bad Gateway</title></head><body>Bad Gateway</body></html>"


def fcm_error(code: str) -> tuple[int, dict[str, Any]]:
    status, canonical, message = FCM_ERRORS[code]
    error_code = "INVALID_ARGUMENT" if code == "INVALID_PAYLOAD" else code
    return status, {
        "error": {
            "code": status,
            "message": message,
            "status": canonical,
            "details": [{"@type": FCM_ERROR_TYPE, "errorCode": error_code}],
        }
    }


class FakeFCM:
    """Scripted per-token failures: rules[token] = {"fcm": "UNREGISTERED" | "INVALID_ARGUMENT" |
    "INVALID_PAYLOAD" | "UNAVAILABLE" | "INTERNAL" | "QUOTA_EXCEEDED" | "HTML_502" | ...,
    "times": n (fail the first n attempts, then succeed; absent: forever), "retry_after": s}.

    `token_down = True` makes the token endpoint answer 503 (google-auth raises RefreshError).
    `record_messages = False` keeps only counts (for the benchmark).
    """

    def __init__(self, public_key_pem: str, token_lifetime: int = 3600) -> None:
        self.public_key_pem, self.token_lifetime = public_key_pem, token_lifetime
        self.rules: dict[str, dict[str, Any]] = {}
        self.attempts: Counter[str | None] = Counter()  # every request per target
        self.delivered: Counter[str] = Counter()  # successful sends per target
        self.sends: list[dict[str, Any]] = []
        self.token_requests: list[dict[str, Any]] = []
        self.token_down = False
        self.record_messages = True
        self.send_delay = 0.0  # seconds every send waits before it is answered (a slow FCM)
        self.total_requests = 0
        self.total_delivered = 0
        self.issued: set[str] = set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.rules.clear()
            self.attempts.clear()
            self.delivered.clear()
            self.sends.clear()
            self.token_requests.clear()
            self.token_down = False
            self.record_messages = True
            self.send_delay = 0.0
            self.total_requests = self.total_delivered = 0

    def delivered_messages(self, token: str) -> list[dict[str, Any]]:
        with self._lock:
            return [s["message"] for s in self.sends if s["target"] == token and s["ok"]]

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if self.token_down:
            return web.Response(status=503, text="token endpoint down")
        try:  # verifies the RS256 JWT google-auth signed with the service-account key
            claims = google_jwt.decode(
                str(form["assertion"]), certs=self.public_key_pem, audience="https://oauth2.googleapis.com/token"
            )
        except Exception as exc:  # noqa: BLE001 - answer like Google
            return web.json_response({"error": "invalid_grant", "error_description": str(exc)}, status=400)
        token = f"fake-access-token-{next(self._ids)}"
        with self._lock:
            self.issued.add(token)
            self.token_requests.append({"iss": claims["iss"], "scope": claims.get("scope")})
        # expires_in must exceed google-auth's 3m45s refresh threshold, else it refetches per request
        return web.json_response({"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"})

    async def _send(self, request: web.Request) -> web.Response:
        if self.send_delay:
            await asyncio.sleep(self.send_delay)
        body = await request.json()
        msg = body.get("message", {})
        kinds = [k for k in ("token", "fid", "topic", "condition") if msg.get(k)]
        target = None
        if len(kinds) == 1:
            target = msg[kinds[0]] if kinds[0] in ("token", "fid") else f"{kinds[0]}:{msg[kinds[0]]}"
        auth = request.headers.get("Authorization", "")
        with self._lock:
            self.total_requests += 1
            self.attempts[target] += 1
            n = self.attempts[target]
            rule = self.rules.get(target) if target else None
            authed = auth.startswith("Bearer ") and auth[7:] in self.issued
            failing = bool(rule) and ("times" not in rule or n <= rule["times"])  # type: ignore[operator]
            ok = authed and target is not None and not failing
            if ok:
                self.total_delivered += 1
                self.delivered[target] += 1  # type: ignore[index]
            if self.record_messages:
                self.sends.append({"target": target, "attempt": n, "ok": ok, "message": msg, "at": time.monotonic(),
                                   "project": request.match_info["project"]})
        if not authed:  # like Google: plain google.rpc.Status, no FcmError detail
            return web.json_response(
                {"error": {"code": 401, "status": "UNAUTHENTICATED",
                           "message": "Request had invalid authentication credentials."}},
                status=401,
            )
        if target is None:
            status, err = fcm_error("INVALID_ARGUMENT")
            return web.json_response(err, status=status)
        if failing:
            assert rule is not None
            if rule["fcm"] == "HTML_502":
                return web.Response(status=502, text=HTML_502, content_type="text/html")
            status, err = fcm_error(rule["fcm"])
            headers = {"Retry-After": str(rule["retry_after"])} if "retry_after" in rule else {}
            return web.json_response(err, status=status, headers=headers)
        return web.json_response({"name": f"projects/{request.match_info['project']}/messages/{next(self._ids)}"})

    def start(self) -> FakeFCM:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            app = web.Application()
            app.router.add_post("/token", self._token)
            app.router.add_post("/v1/projects/{project}/messages:send", self._send)
            runner = web.AppRunner(app, access_log=None)
            self._loop.run_until_complete(runner.setup())
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            self._loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(runner.cleanup())

        self._thread = threading.Thread(target=run, name="fakefcm", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("fake FCM did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def make_keypair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return private_pem, public_pem


def service_account(private_pem: str, token_uri: str, project_id: str = "demo-chat") -> dict[str, str]:
    """An ordinary service-account key whose token_uri is the fake's /token."""
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": "fake-key-1",
        "private_key": private_pem,
        "client_id": "1",
        "client_email": f"fcm-test@{project_id}.iam.gserviceaccount.com",
        "token_uri": token_uri,
    }


class FakeFCMServer:
    """A started FakeFCM plus the service-account JSON file pointing at it."""

    def __init__(self, directory: Path) -> None:
        private_pem, public_pem = make_keypair()
        self.fake = FakeFCM(public_pem).start()
        self.credentials_path = str(directory / "fcm-service-account.json")
        Path(self.credentials_path).write_text(
            json.dumps(service_account(private_pem, self.fake.base_url + "/token"))
        )

    @property
    def endpoint(self) -> str:
        return self.fake.base_url

    def stop(self) -> None:
        self.fake.stop()
