"""Serve a Prometheus registry on a bounded listener (`agent.host.bounded`).

Why not prometheus_client's `start_http_server`: it is a threading WSGI server whose every
connection holds a thread blocked in `readline()` with no timeout, so idle or slow clients
on the lab segment pile up threads without bound. Here the selector thread frames requests
(8 KiB heads, no bodies), two workers render the registry (a scrape reads libvirt), and
every answer closes its connection.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from agent.host.bounded import (
    BoundedServer,
    HttpFraming,
    HttpRequest,
    Limits,
    Respond,
    http_response,
)

EXPORTER_LIMITS = Limits(max_connections=32, request_timeout_s=5.0, write_timeout_s=10.0)
EXPORTER_FRAMING = HttpFraming(max_bytes=8192, max_body=0)
METRICS_PATHS = {"/", "/metrics"}


class MetricsServer:
    """GET /metrics (or /) → the registry in the text exposition format."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 limits: Limits = EXPORTER_LIMITS) -> None:
        self.registry = registry
        self.pool = ThreadPoolExecutor(2, thread_name_prefix="metrics")
        self.server = BoundedServer((host, port), EXPORTER_FRAMING, self._dispatch, limits,
                                    name="metrics")
        self.server_address = self.server.server_address

    def _dispatch(self, request: HttpRequest, respond: Respond) -> None:
        if request.method not in ("GET", "HEAD"):
            respond(http_response(405, b"GET only\n", "text/plain"), True)
        elif request.path.partition("?")[0] not in METRICS_PATHS:
            respond(http_response(404, b"try /metrics\n", "text/plain"), True)
        else:
            self.pool.submit(self._answer, request, respond)

    def _answer(self, request: HttpRequest, respond: Respond) -> None:
        try:
            data = generate_latest(self.registry)
        except Exception as exc:  # noqa: BLE001 - a scrape answers, the server lives on
            respond(http_response(500, f"{type(exc).__name__}\n".encode(), "text/plain"), True)
            return
        reply = http_response(200, data, CONTENT_TYPE_LATEST)
        if request.method == "HEAD":
            reply = reply[:reply.index(b"\r\n\r\n") + 4]
        respond(reply, True)

    def start(self) -> MetricsServer:
        self.server.start()
        return self

    def shutdown(self) -> None:
        self.server.shutdown()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self.shutdown()
        self.server.server_close()


def serve_registry(registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
    return MetricsServer(registry, host, port).start()
