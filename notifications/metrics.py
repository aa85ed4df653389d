"""Prometheus metrics of the push pipeline, registered on the default registry at import.

The server's /metrics exposes prometheus_client's default REGISTRY; an external worker
process (`python -m notifications.worker`) has its own registry and counters.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PUSH_SENT = Counter("backstage_push_sent_total", "Pushes accepted by FCM.")
PUSH_FAILED = Counter(
    "backstage_push_failed_total", "Pushes given up on (permanent error, dead token or too many attempts)."
)
PUSH_RETRIED = Counter("backstage_push_retried_total", "Push attempts that failed transiently and were rescheduled.")
PUSH_SKIPPED = Counter("backstage_push_skipped_total", "Pushes not sent because FCM is not configured.")
PUSH_TOKENS_REMOVED = Counter(
    "backstage_push_tokens_removed_total", "Device tokens deleted because FCM reported them unregistered or invalid."
)
PUSH_OUTBOX_DEPTH = Gauge("backstage_push_outbox_depth", "Outbox rows pending or being sent.")
PUSH_OUTBOX_OLDEST_AGE = Gauge(
    "backstage_push_outbox_oldest_pending_age_seconds", "Age of the oldest pending or sending outbox row (0 if none)."
)
PUSH_BATCH_SECONDS = Histogram(
    "backstage_push_batch_seconds",
    "Wall time of one send_each_async batch.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
)
PUSH_EXPANDED = Counter(
    "backstage_push_expanded_total", "Outbox rows written by expanding fan-out jobs (one per device)."
)
