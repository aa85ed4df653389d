"""Prometheus metrics of the chat side (the push side has notifications/metrics.py)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTED_SOCKETS = Gauge("backstage_connected_sockets", "Socket.IO connections held by this process")
MESSAGES_STORED = Counter("backstage_messages_stored_total", "Chat messages committed by this process")
EVENTS = Counter("backstage_socket_events_total", "Socket.IO events handled", ["event", "outcome"])
EVENT_LATENCY = Histogram(
    "backstage_socket_event_seconds", "Socket.IO handler latency", ["event"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
HTTP_REQUESTS = Counter("backstage_http_requests_total", "HTTP API requests", ["route", "status"])
UPLOADS_REMOVED = Counter("backstage_uploads_removed_total",
                          "Uploads never sent, removed after UPLOAD_TTL_S (chat/uploadsweep.py)")
UPLOAD_BLOBS_DELETED = Counter("backstage_upload_blobs_deleted_total",
                               "Blobs (files and thumbnails) of removed uploads deleted from the store")
UPLOAD_BLOB_DELETE_FAILURES = Counter("backstage_upload_blob_delete_failures_total",
                                      "Blob deletes that failed (retried at a later sweep)")
UPLOAD_BLOB_DELETIONS_PENDING = Gauge("backstage_upload_blob_deletions_pending",
                                      "Blobs of removed uploads still to delete from the store (after the last sweep)")
