"""Verify a Backstage webhook request (docs/webhooks.md) in your backend.

    from backstage_publisher import verify_webhook, WebhookVerificationError

    event = verify_webhook(secret, request.headers, raw_body)   # the exact bytes received
    # -> {"id": "evt_...", "type": "message.created", "created_at": "...", "data": {...}}

The `Backstage-Signature` header is `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, the v1 being
HMAC-SHA256 with the secret over `<t>.<body>`. A request is genuine when one v1 matches (compared
in constant time) and `t` is within `tolerance` seconds of now (older requests may be replays).
Deliveries are at least once: deduplicate on the event's `id` (also in `Backstage-Event-Id`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

SIGNATURE_HEADER = "Backstage-Signature"


class WebhookVerificationError(Exception):
    """The request is not a genuine, recent Backstage webhook: answer 400 and ignore it."""


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, val in headers.items():
        if key.lower() == lowered:
            return val
    return None


def verify_webhook(secret: str | Sequence[str], headers: Mapping[str, str], body: bytes | str,
                   tolerance: float = 300, *, now: float | None = None) -> dict[str, Any]:
    """Check the signature of one webhook request and return its event (the parsed body).

    `secret`: WEBHOOK_SECRET (or several while rotating); `headers`: the request's headers (any
    mapping; the name is matched case-insensitively); `body`: the raw body, before any JSON
    parsing. Raises WebhookVerificationError when the header is missing or malformed, no
    signature matches, or the timestamp is more than `tolerance` seconds away from `now`.
    """
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or not all(secrets):
        raise ValueError("a webhook secret is required")
    raw_body = body.encode() if isinstance(body, str) else bytes(body)
    header = _header(headers, SIGNATURE_HEADER)
    if not header:
        raise WebhookVerificationError(f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if key == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise WebhookVerificationError("malformed timestamp in the signature header") from None
        elif key == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise WebhookVerificationError("the signature header has no t= or no v1=")
    signed = f"{timestamp}.".encode() + raw_body
    expected = [hmac.new(s.encode(), signed, hashlib.sha256).hexdigest() for s in secrets]
    # every pair is compared (no early exit), each in constant time
    matched = False
    for candidate in signatures:
        for good in expected:
            matched |= hmac.compare_digest(candidate.encode(), good.encode())
    if not matched:
        raise WebhookVerificationError("no signature matches the secret")
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(f"timestamp outside the tolerance of {tolerance:g} s (a replay?)")
    try:
        event = json.loads(raw_body)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(event, dict):
        raise WebhookVerificationError("the body is not a JSON object")
    return event
