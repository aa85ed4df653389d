"""Webhooks to the platform's backend (docs/webhooks.md): signed HTTP POSTs of chat and
moderation events, delivered at least once from a durable outbox (the `webhook_outbox` table).

Producers write the event in the transaction of the thing it reports, so it is never lost nor
sent for something that was rolled back:

    from webhooks import record
    await record(session, "member.blocked", {"creator_id": ..., "user_id": ..., "by": ...},
                 settings.webhook_events)

`record` does nothing (no query) when the event type is not enabled (WEBHOOK_URL unset, or the
type not in WEBHOOK_EVENTS). The worker (webhooks/worker.py) delivers the rows: inline in the
server by default, or in `python -m notifications.worker` with WEBHOOK_WORKER=external.
"""

from __future__ import annotations

from webhooks.outbox import record, record_many

MESSAGE_CREATED = "message.created"
MESSAGE_REPORTED = "message.reported"
MEMBER_BLOCKED = "member.blocked"
MEMBER_TIMED_OUT = "member.timed_out"
MODERATION_ACTION = "moderation.action"
EVENT_TYPES = (MESSAGE_CREATED, MESSAGE_REPORTED, MEMBER_BLOCKED, MEMBER_TIMED_OUT, MODERATION_ACTION)
# WEBHOOK_EVENTS unset: every type but message.created (opt-in: one event per chat message)
DEFAULT_EVENT_TYPES = (MESSAGE_REPORTED, MEMBER_BLOCKED, MEMBER_TIMED_OUT, MODERATION_ACTION)

__all__ = ["DEFAULT_EVENT_TYPES", "EVENT_TYPES", "MEMBER_BLOCKED", "MEMBER_TIMED_OUT", "MESSAGE_CREATED",
           "MESSAGE_REPORTED", "MODERATION_ACTION", "record", "record_many"]
