"""The controller's JSON API (HTTP), plus the client the orchestrator uses to call it.

Endpoints (bound to loopback or the lab gateway only):
    GET  /stats              per-class and per-link counters read from the switch now
    GET  /locations          MME location updates received (last 1000)
    POST /nodes   {name, port, mac}   register a fog node (proactive forwarding)
    POST /move    {mac, node}         migration-aware flow move at switch-over
    POST /locate  {device, bs[, members, at]}   an MME location update (forwarded or stored)
    GET  /locate-endpoint                       where updates are forwarded (null: nowhere)
    POST /locate-endpoint {endpoint: "ADDR:PORT" | null}   forward them to the orchestrator's
                             `locate --serve` line-JSON endpoint (loopback or the gateway)
Errors answer 400 with {"error": ...}. No os-ken import here: the client side runs in the
orchestrator.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

from orchestrator.errors import OrchestratorError, UserError


class Controller(Protocol):
    locations: Any

    def stats(self) -> dict[str, Any]: ...
    def add_node(self, name: str, port: int, mac: str) -> dict[str, Any]: ...
    def move(self, mac: str, node: str) -> dict[str, Any]: ...
    def locate(self, update: dict[str, Any]) -> dict[str, Any]: ...
    def locate_endpoint(self) -> dict[str, Any]: ...
    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]: ...


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
            return 200, controller.locate(check_update(body))
        if method == "GET" and path == "/locate-endpoint":
            return 200, controller.locate_endpoint()
        if method == "POST" and path == "/locate-endpoint":
            endpoint = body["endpoint"]
            return 200, controller.set_locate_endpoint(None if endpoint is None
                                                       else str(endpoint))
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


def check_update(body: Any) -> dict[str, Any]:
    """An MME location update as `locate --serve` reads it: {"device": ID, "bs": BS[,
    "members": [ID, ...], "at": seconds]}; ValueError (a 400) otherwise."""
    if not isinstance(body, dict):
        raise ValueError("a location update is a JSON object")
    for key in ("device", "bs"):
        if not isinstance(body.get(key), str) or not body[key]:
            raise ValueError(f"a location update needs {key!r} (a non-empty string)")
    members = body.get("members", [])
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise ValueError("'members' is a list of device ids")
    at = body.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)):
        raise ValueError("'at' is a time in seconds")
    return body


def check_endpoint(endpoint: str, allowed: set[str]) -> str:
    """ADDR:PORT on loopback or an allowed (lab gateway) address: the controller forwards
    location updates only to the orchestrator on this machine."""
    host, sep, port = endpoint.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"an endpoint is ADDR:PORT, got {endpoint!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid address {host!r} in {endpoint!r}") from None
    if not ip.is_loopback and host not in allowed:
        raise ValueError(f"refusing to forward to {host}: only loopback or the lab gateway")
    return f"{host}:{int(port)}"


class LocationRelay:
    """The MME's entry point at the controller: every update is kept (last `keep`) and, when
    an endpoint is set, forwarded to the orchestrator's `locate --serve`, whose reply (the
    decisions it caused) is the answer. Thread-safe; `forward` injectable for tests."""

    def __init__(self, endpoint: str | None = None, allowed: set[str] | None = None,
                 forward: Callable[[str, dict[str, Any]], Any] = forward_line_json,
                 keep: int = 1000) -> None:
        self.allowed = set(allowed or ())
        self.forward = forward
        self.updates: deque[dict[str, Any]] = deque(maxlen=keep)
        self.lock = threading.Lock()
        self.endpoint = None if endpoint is None else check_endpoint(endpoint, self.allowed)

    def set_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        checked = None if endpoint is None else check_endpoint(endpoint, self.allowed)
        with self.lock:
            self.endpoint = checked
        return self.describe()

    def describe(self) -> dict[str, Any]:
        return {"locate_endpoint": self.endpoint, "received": len(self.updates)}

    def locate(self, update: dict[str, Any]) -> dict[str, Any]:
        update = check_update(update)
        with self.lock:
            self.updates.append(update)
            target = self.endpoint
        if target is None:
            return {"ok": True, "stored": True}
        reply = self.forward(target, update)
        return reply if isinstance(reply, dict) else {"ok": False, "error": repr(reply)}


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

    def locations(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/locations"))

    def locate_endpoint(self) -> dict[str, Any]:
        return dict(self.call("GET", "/locate-endpoint"))

    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        return dict(self.call("POST", "/locate-endpoint", {"endpoint": endpoint}))
