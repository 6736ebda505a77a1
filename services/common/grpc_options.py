"""gRPC server options shared by the services."""

from __future__ import annotations

# The ingress and the dashboard ping their channels every 30 s
# (grpc.keepalive_time_ms), so that a dead peer is noticed on a long-lived
# stream. gRPC servers accept pings on a connection without data only every 5
# minutes by default and close the connection on more frequent ones (GOAWAY
# "too_many_pings"), so the servers allow one every 20 s. The server-side
# key is grpc.http2.min_ping_interval_without_data_ms; gRPC core names it
# GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS.
SERVER_KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
)
