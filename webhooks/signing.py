"""The signature of a webhook request (docs/webhooks.md), Stripe's scheme:

    Backstage-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

one `v1=` per configured secret (WEBHOOK_SECRET=new,old while rotating). The receiver checks
any v1 with its secret in constant time and refuses a `t` too far from its clock (replays).
backstage_publisher.verify_webhook is the receiver's side.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

SIGNATURE_HEADER = "Backstage-Signature"
EVENT_ID_HEADER = "Backstage-Event-Id"
EVENT_TYPE_HEADER = "Backstage-Event-Type"


def signature(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    return ",".join([f"t={timestamp}", *(f"v1={signature(s, timestamp, body)}" for s in secrets)])
