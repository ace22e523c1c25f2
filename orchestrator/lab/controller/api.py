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

The API is served by a bounded listener (`agent.host.bounded`): 8 KiB heads, 16 KiB
bodies of strict UTF-8 JSON, 64 connections (the longest-waiting one is closed for a
newcomer), 5 s to send a request and to take a reply, one request per connection.
Updates forwarded to `locate --serve` are signed (RelayAuth: HMAC-SHA256 with a key in the
lab's state directory, timestamp window and one-time nonces); `locate --serve` accepts
nothing else.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from agent.host.bounded import (
    BadRequest,
    BoundedServer,
    HttpFraming,
    HttpRequest,
    Limits,
    Respond,
    http_response,
)
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.netguard import NO_PROXY_OPENER


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


API_LIMITS = Limits(max_connections=64, request_timeout_s=5.0, write_timeout_s=5.0)
API_FRAMING = HttpFraming(max_bytes=8192, max_body=16384)
API_WORKERS = 4


class ApiServer:
    """The controller's HTTP API on a bounded listener (`agent.host.bounded`): requests are
    framed by the selector thread, answered by a small worker pool (a /stats waits for the
    switch), one request per connection."""

    def __init__(self, controller: Controller, host: str, port: int,
                 limits: Limits = API_LIMITS) -> None:
        self.controller = controller
        self.pool = ThreadPoolExecutor(API_WORKERS, thread_name_prefix="sdn-api")
        # A relayed update waits for locate --serve, which may migrate a VM whose switch-over
        # then calls /move here: updates get their own workers so /move always has one.
        self.relay_pool = ThreadPoolExecutor(API_WORKERS, thread_name_prefix="sdn-relay")
        self.server = BoundedServer((host, port), API_FRAMING, self._dispatch, limits,
                                    name="sdn-api")
        self.server_address = self.server.server_address

    def _dispatch(self, request: HttpRequest, respond: Respond) -> None:
        body = parse_json_body(request.body)  # BadRequest: a 400 from the listener
        pool = self.relay_pool if request.path == "/locate" else self.pool
        pool.submit(self._answer, request, body, respond)

    def _answer(self, request: HttpRequest, body: Any, respond: Respond) -> None:
        status, reply = dispatch(self.controller, request.method, request.path, body)
        respond(http_response(status, json.dumps(reply).encode()), True)

    def shutdown(self) -> None:
        self.server.shutdown()
        for pool in (self.pool, self.relay_pool):
            pool.shutdown(wait=False, cancel_futures=True)

    def server_close(self) -> None:
        self.shutdown()
        self.server.server_close()


def parse_json_body(body: bytes) -> Any:
    """A request body: empty, or one strict UTF-8 JSON document (no UTF-16/32 guessing, no
    nesting deep enough to exhaust the parser)."""
    if not body:
        return {}
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest("body is not UTF-8 JSON") from None


def serve_api(controller: Controller, host: str, port: int) -> ApiServer:
    api = ApiServer(controller, host, port)
    api.server.start()
    return api


RELAY_KEY_FILE = "relay.key"
RELAY_WINDOW_S = 30.0  # a signed update older or newer than this is refused
RELAY_MAX_NONCES = 100_000
RELAY_CONTEXT = b"edgeiot-relay-v1\n"
MAX_ID = 256
RELAY_REPLY_S = 180.0  # an update can boot a mobile proxy and migrate another first
MAX_MEMBERS = 256


def relay_key_file(lab_root: Path) -> Path:
    """Where a lab's relay key lives: its state directory (root only), gone with the lab.
    The controller finds it two levels above its config (`<lab>/ovs/<prefix>-controller.json`)."""
    return lab_root / RELAY_KEY_FILE


def load_relay_key(path: Path) -> bytes:
    """The shared key, created (32 random bytes, mode 0600) by whichever side needs it
    first; O_EXCL makes the two sides agree on one key even when they start together."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # the creator may not have written it yet
            text = path.read_text().strip()
            if text:
                break
            time.sleep(0.01)
        try:
            key = bytes.fromhex(text)
        except ValueError:
            key = b""
        if len(key) < 16:
            raise OrchestratorError(f"relay key {path} is unusable: remove it") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex())
    return key


@dataclass
class RelayAuth:
    """Location updates from the controller's relay to `locate --serve`, authenticated.

    Why: `locate --serve` listens on the lab gateway, which every VM and device reaches, and
    what it receives moves VMs. The relay (the MME's network function) is the one trusted
    sender, so each forwarded update carries HMAC-SHA256 over (update, ts, nonce) with a key
    shared through the lab's state directory. Replay protection: `ts` within RELAY_WINDOW_S
    of the receiver's clock and each nonce accepted once within the window (a bounded set).
    """

    key: bytes
    clock: Callable[[], float] = time.time
    window_s: float = RELAY_WINDOW_S
    seen: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _mac(self, update: Any, ts: float, nonce: str) -> str:
        body = json.dumps({"update": update, "ts": ts, "nonce": nonce}, sort_keys=True,
                          separators=(",", ":")).encode()
        return hmac.new(self.key, RELAY_CONTEXT + body, hashlib.sha256).hexdigest()

    def sign(self, update: dict[str, Any]) -> dict[str, Any]:
        ts, nonce = self.clock(), secrets.token_hex(16)
        return {"update": update, "ts": ts, "nonce": nonce,
                "mac": self._mac(update, ts, nonce)}

    def verify(self, message: Any) -> dict[str, Any]:
        """The update inside a signed message; ValueError (one line) when it is not one."""
        if not isinstance(message, dict) or set(message) != {"update", "ts", "nonce", "mac"}:
            raise ValueError("unauthenticated: a signed relay message is expected")
        ts, nonce, mac = message["ts"], message["nonce"], message["mac"]
        if (isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts)
                or not isinstance(nonce, str) or not 16 <= len(nonce) <= 64
                or not isinstance(mac, str)):
            raise ValueError("unauthenticated: malformed signature fields")
        if not hmac.compare_digest(mac, self._mac(message["update"], ts, nonce)):
            raise ValueError("unauthenticated: bad signature")
        now = self.clock()
        if abs(now - ts) > self.window_s:
            raise ValueError("unauthenticated: stale or future timestamp")
        with self.lock:
            self._forget(now)
            if nonce in self.seen:
                raise ValueError("unauthenticated: replayed message")
            if len(self.seen) >= RELAY_MAX_NONCES:
                raise ValueError("busy: too many signed messages in the replay window")
            self.seen[nonce] = ts
        return check_update(message["update"])

    def _forget(self, now: float) -> None:
        for nonce in [n for n, t in self.seen.items() if abs(now - t) > self.window_s]:
            del self.seen[nonce]


def forward_line_json(endpoint: str, update: dict[str, Any], auth: RelayAuth,
                      timeout_s: float = RELAY_REPLY_S) -> Any:
    """Send one signed update to a `locate --serve` endpoint (host:port), return its reply.
    The timeout is long: an update can boot a mobile proxy before it is answered."""
    host, _, port = endpoint.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(json.dumps(auth.sign(update)).encode() + b"\n")
        reply = sock.makefile("rb").readline(1 << 20)
    return json.loads(reply) if reply else {"ok": False, "error": "no reply"}


def check_update(body: Any) -> dict[str, Any]:
    """An MME location update as `locate --serve` reads it: {"device": ID, "bs": BS[,
    "members": [ID, ...], "at": seconds]}; ValueError (a 400) otherwise."""
    if not isinstance(body, dict):
        raise ValueError("a location update is a JSON object")
    unknown = set(body) - {"device", "bs", "members", "at"}
    if unknown:
        raise ValueError(f"unknown field(s) in a location update: {sorted(unknown)[:3]}")
    for key in ("device", "bs"):
        if not _is_id(body.get(key)):
            raise ValueError(f"a location update needs {key!r} (a non-empty string of at most "
                             f"{MAX_ID} printable characters)")
    members = body.get("members", [])
    if (not isinstance(members, list) or len(members) > MAX_MEMBERS
            or not all(_is_id(m) for m in members)):
        raise ValueError(f"'members' is a list of at most {MAX_MEMBERS} device ids")
    at = body.get("at")
    if at is not None and (isinstance(at, bool) or not isinstance(at, int | float)
                           or not math.isfinite(at) or at < 0):
        raise ValueError("'at' is a time in seconds")
    return body


def _is_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_ID and value.isprintable()


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
    decisions it caused) is the answer. Thread-safe; `forward` injectable for tests.
    Forwarded updates are signed with `auth` (see RelayAuth); without a key nothing is
    forwarded, since `locate --serve` would refuse it."""

    def __init__(self, endpoint: str | None = None, allowed: set[str] | None = None,
                 forward: Callable[[str, dict[str, Any]], Any] | None = None,
                 keep: int = 1000, auth: RelayAuth | None = None) -> None:
        self.allowed = set(allowed or ())
        self.forward = forward or self._signed_forward
        self.auth = auth
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
        return reply if isinstance(reply, dict) else {"ok": False, "error": repr(reply)[:200]}

    def _signed_forward(self, endpoint: str, update: dict[str, Any]) -> Any:
        if self.auth is None:
            return {"ok": False, "error": "the relay has no key: not forwarded"}
        try:
            return forward_line_json(endpoint, update, self.auth)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"locate --serve at {endpoint}: {exc}"}


class ControllerClient:
    """The orchestrator's side of the API; `base` is http://host:port of a lab's controller,
    whose host must be a loopback address (the API listens nowhere else)."""

    def __init__(self, base: str, timeout_s: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.timeout_s = timeout_s
        parsed = urllib.parse.urlsplit(self.base)
        try:
            loopback = parsed.scheme == "http" and ipaddress.ip_address(
                parsed.hostname or "").is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise UserError(f"SDN controller API must be http on a loopback address, "
                            f"got {base!r}")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             timeout_s: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            # NOTE: never urlopen: it would honour http_proxy from the environment.
            with NO_PROXY_OPENER.open(req, timeout=timeout_s or self.timeout_s) as resp:
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
        """Answered once `locate --serve` has acted on it, which may boot or migrate a
        proxy VM: as long as the relay waits (RELAY_REPLY_S)."""
        return self.call("POST", "/locate", update, timeout_s=RELAY_REPLY_S + 10)

    def locations(self) -> list[dict[str, Any]]:
        return list(self.call("GET", "/locations"))

    def locate_endpoint(self) -> dict[str, Any]:
        return dict(self.call("GET", "/locate-endpoint"))

    def set_locate_endpoint(self, endpoint: str | None) -> dict[str, Any]:
        return dict(self.call("POST", "/locate-endpoint", {"endpoint": endpoint}))
