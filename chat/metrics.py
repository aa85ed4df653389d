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
