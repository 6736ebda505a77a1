"""A /metrics HTTP endpoint on its own port, for the gRPC services.

prometheus_client serves it from a daemon thread, so scrapes never wait on the
service's event loop. ``port`` -1 binds a free port (for tests); the bound
port is in ``MetricsServer.port``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class MetricsServer:
    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    registry: CollectorRegistry, host: str, port: int
) -> MetricsServer:
    server, thread = start_http_server(max(port, 0), addr=host, registry=registry)
    metrics = MetricsServer(server, thread)
    logger.info("metrics on http://%s:%d/metrics", host, metrics.port)
    return metrics
