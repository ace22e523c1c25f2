"""The controller's JSON API (HTTP), plus the client the orchestrator uses to call it.

Endpoints (bound to loopback or the lab gateway only):
    GET  /stats              per-class and per-link counters read from the switch now
    GET  /locations          MME location updates received (last 1000)
    POST /nodes   {name, port, mac}   register a fog node (proactive forwarding)
    POST /move    {mac, node}         migration-aware flow move at switch-over
    POST /locate  {...update...}      an MME location update (forwarded or stored)
Errors answer 400 with {"error": ...}. No os-ken import here: the client side runs in the
orchestrator.
"""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from orchestrator.errors import OrchestratorError, UserError


class Controller(Protocol):
    locations: Any

    def stats(self) -> dict[str, Any]: ...
    def add_node(self, name: str, port: int, mac: str) -> dict[str, Any]: ...
    def move(self, mac: str, node: str) -> dict[str, Any]: ...
    def locate(self, update: dict[str, Any]) -> dict[str, Any]: ...


def dispatch(controller: Controller, method: str, path: str,
             body: dict[str, Any]) -> tuple[int, Any]:
    """(HTTP status, JSON reply) for one request; pure routing, testable with a fake."""
    try:
        if method == "GET" and path == "/stats":
            return 200, controller.stats()
        if method == "GET" and path == "/locations":
            return 200, list(controller.locations)
        if method == "POST" and path == "/nodes":
            return 200, controller.add_node(str(body["name"]), int(body["port"]),
                                            str(body["mac"]))
        if method == "POST" and path == "/move":
            return 200, controller.move(str(body["mac"]), str(body["node"]))
        if method == "POST" and path == "/locate":
            if not isinstance(body, dict) or not body:
                raise ValueError("a location update is a non-empty JSON object")
            return 200, controller.locate(body)
    except (KeyError, ValueError, TypeError, UserError) as exc:
        return 400, {"error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 - an API answer, never a dead handler
        return 500, {"error": f"{type(exc).__name__}: {exc}"}
    return 404, {"error": f"no such endpoint: {method} {path}"}


def serve_api(controller: Controller, host: str, port: int) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _reply(self, method: str) -> None:
            body: Any = {}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError:
                    self._send(400, {"error": "body is not JSON"})
                    return
            self._send(*dispatch(controller, method, self.path, body))

        def _send(self, status: int, reply: Any) -> None:
            data = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._reply("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._reply("POST")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True, name="sdn-api").start()
    return server


def forward_line_json(endpoint: str, update: dict[str, Any], timeout_s: float = 10.0) -> Any:
    """Send one update to a `locate --serve` line-JSON endpoint (host:port), return its reply."""
    host, _, port = endpoint.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(json.dumps(update).encode() + b"\n")
        reply = sock.makefile("rb").readline()
    return json.loads(reply) if reply else {"ok": False, "error": "no reply"}


class ControllerClient:
    """The orchestrator's side of the API; `base` is http://host:port of a lab's controller."""

    def __init__(self, base: str, timeout_s: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise OrchestratorError(f"SDN controller {path}: {exc.code} {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise OrchestratorError(f"SDN controller at {self.base} unreachable: {exc}") from exc

    def stats(self) -> dict[str, Any]:
        return dict(self.call("GET", "/stats"))

    def add_node(self, name: str, port: int, mac: str) -> Any:
        return self.call("POST", "/nodes", {"name": name, "port": port, "mac": mac})

    def move(self, mac: str, node: str) -> Any:
        return self.call("POST", "/move", {"mac": mac, "node": node})

    def locate(self, update: dict[str, Any]) -> Any:
        return self.call("POST", "/locate", update)
