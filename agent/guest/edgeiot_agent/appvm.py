"""The application VM's role: receive metadata from proxy VMs, answer users' queries.

Why: an application VM (local in a fog node, remote in the cloud, or an add-on created for
an event) only ever sees metadata. It listens on port 7072 for proxies' metadata links
(wire.py): a proxy says `hello {app, proxy, epoch}` and proves, with a nonce, that it holds
wire.sink_key(this VM's key, app, proxy) — the key the orchestrator gave only the proxies it
authorised for that application. Then its numbered `meta` lines are checked against the
application's metadata schema (fields, types and ranges: one forged line must not break
later queries), deduplicated by sequence number and acked cumulatively, so metadata arrives
exactly once across connection resets. Lines from anyone else are refused and counted.

It keeps what its application needs, answers queries over the control port (`app_query`),
and keeps every accepted line as `{"app", "src", "m"}` (bounded), so a test can audit
exactly what reached it (`app_received`, with the refusal counters).

Applications: ParkNet (request / reserve a free spot near a point), traffic (best route
between two areas, avoiding congested ones) and face finding (matches of the missing child).
"""

from __future__ import annotations

import heapq
import math
import socket
import threading

from . import wire
from .control import RequestError
from .lineserver import Conn, LineServer, LineSplitter
from .metadata import SchemaError, check
from .models import FaceMatch, ParkNet, Traffic

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_LINE = wire.MAX_META_LINE
MAX_KEPT = 20000
MAX_REPLY_BYTES = 512 * 1024  # one `app_received` page
MAX_GRID_CELLS = 40000  # a route query never searches a larger box
MAX_AREA_INDEX = 10**6  # area rows and columns (cells of 0.01 degree) stay within it
T = wire.FRAME_KIND


def _in(m: dict[str, Any], key: str, low: float, high: float) -> None:
    if not low <= m[key] <= high:
        raise SchemaError(f"{key}={m[key]!r} outside [{low}, {high}]")


def _position(m: dict[str, Any]) -> None:
    _in(m, "lat", -90.0, 90.0)
    _in(m, "lon", -180.0, 180.0)
    _in(m, "ts", 0.0, 1e11)


class ParkNetApp:
    kind = "parknet"
    SCHEMA = ParkNet.SCHEMA

    @staticmethod
    def validate(m: dict[str, Any]) -> None:
        _position(m)
        if not 0 < len(m["spot"]) <= 64:
            raise SchemaError("spot must be 1..64 characters")

    def __init__(self) -> None:
        self.spots: dict[str, dict[str, Any]] = {}
        self.reserved: dict[str, str] = {}

    def ingest(self, src: str, m: dict[str, Any]) -> None:
        known = self.spots.get(m["spot"])
        if known is None or m["ts"] >= known["ts"]:
            self.spots[m["spot"]] = {"lat": m["lat"], "lon": m["lon"], "free": m["free"],
                                     "ts": m["ts"], "src": src}

    def query(self, q: dict[str, Any]) -> dict[str, Any]:
        op = q.get("q")
        if op == "request":
            lat, lon = _point(q, "lat"), _point(q, "lon")
            free = [(math.hypot(s["lat"] - lat, s["lon"] - lon), spot)
                    for spot, s in self.spots.items()
                    if s["free"] and spot not in self.reserved]
            k = q.get("k", 3)
            if isinstance(k, bool) or not isinstance(k, int) or not 0 < k <= 1000:
                raise RequestError("k must be an integer in 1..1000")
            return {"spots": [{"spot": spot, "distance_deg": round(d, 6)}
                              for d, spot in sorted(free)[:k]]}
        if op == "reserve":
            spot, user = str(q.get("spot")), str(q.get("user", "anonymous"))
            s = self.spots.get(spot)
            if s is None or not s["free"] or spot in self.reserved:
                raise RequestError(f"spot {spot} is not free")
            self.reserved[spot] = user
            return {"reserved": spot, "user": user}
        if op == "spots":
            return {"free": sorted(s for s, v in self.spots.items() if v["free"]),
                    "occupied": sorted(s for s, v in self.spots.items() if not v["free"]),
                    "reserved": dict(self.reserved)}
        raise RequestError("parknet queries: request, reserve, spots")


def parse_area(area: str) -> tuple[int, int]:
    """'A<row>_<col>' as integers; ValueError for anything else (including huge ones)."""
    if not area.startswith("A") or len(area) > 32:
        raise ValueError(f"not an area: {area[:40]!r}")
    row, col = area[1:].split("_")
    out = int(row), int(col)
    if max(abs(out[0]), abs(out[1])) > MAX_AREA_INDEX:
        raise ValueError(f"area out of range: {area!r}")
    return out


def best_route(degrees: dict[str, float], start: str, goal: str,
               penalty: float = 4.0) -> tuple[list[str], float]:
    """Cheapest 4-neighbour path over the area grid; entering an area costs 1 + penalty x
    its congestion degree (unknown areas count as free). Searches the bounding box of the
    known areas and the endpoints, widened by one."""
    cells = [parse_area(a) for a in [*degrees, start, goal]]
    rows, cols = [c[0] for c in cells], [c[1] for c in cells]
    box = (min(rows) - 1, max(rows) + 1, min(cols) - 1, max(cols) + 1)
    if (box[1] - box[0] + 1) * (box[3] - box[2] + 1) > MAX_GRID_CELLS:
        raise ValueError("areas too far apart")
    s, g = parse_area(start), parse_area(goal)
    dist, prev = {s: 0.0}, {}
    heap = [(0.0, s)]
    while heap:
        d, cell = heapq.heappop(heap)
        if cell == g:
            break
        if d > dist.get(cell, math.inf):
            continue
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            nxt = (cell[0] + dr, cell[1] + dc)
            if not (box[0] <= nxt[0] <= box[1] and box[2] <= nxt[1] <= box[3]):
                continue
            nd = d + 1.0 + penalty * degrees.get(f"A{nxt[0]}_{nxt[1]}", 0.0)
            if nd < dist.get(nxt, math.inf):
                dist[nxt], prev[nxt] = nd, cell
                heapq.heappush(heap, (nd, nxt))
    path, cell = [g], g
    while cell != s:
        cell = prev[cell]
        path.append(cell)
    return [f"A{r}_{c}" for r, c in reversed(path)], round(dist[g], 3)


class TrafficApp:
    kind = "traffic"
    SCHEMA = Traffic.SCHEMA

    @staticmethod
    def validate(m: dict[str, Any]) -> None:
        try:
            parse_area(m["area"])
        except ValueError:
            raise SchemaError(f"area {m['area'][:40]!r} is not A<row>_<col>") from None
        _in(m, "degree", 0.0, 1.0)
        _in(m, "samples", 1, 10**6)
        _in(m, "ts", 0.0, 1e11)

    def __init__(self) -> None:
        self.reports: dict[str, dict[str, tuple[float, float, int]]] = {}

    def ingest(self, src: str, m: dict[str, Any]) -> None:
        self.reports.setdefault(m["area"], {})[src] = (m["ts"], m["degree"], m["samples"])

    def degrees(self) -> dict[str, float]:
        """Per area, the sample-weighted mean of each proxy's latest report."""
        out = {}
        for area, by_src in self.reports.items():
            total = sum(n for _, _, n in by_src.values()) or 1
            out[area] = round(sum(deg * n for _, deg, n in by_src.values()) / total, 3)
        return out

    def query(self, q: dict[str, Any]) -> dict[str, Any]:
        op = q.get("q")
        if op == "areas":
            return {"degrees": self.degrees()}
        if op == "route":
            try:
                path, cost = best_route(self.degrees(), str(q.get("from")), str(q.get("to")))
            except (ValueError, IndexError):
                raise RequestError("route needs 'from' and 'to' areas like A4012_-7401, "
                                   f"at most {MAX_GRID_CELLS} grid cells apart") from None
            return {"route": path, "cost": cost}
        raise RequestError("traffic queries: areas, route")


class FaceFindApp:
    kind = "facefind"
    SCHEMA = FaceMatch.SCHEMA

    @staticmethod
    def validate(m: dict[str, Any]) -> None:
        _position(m)
        _in(m, "distance", 0, 64)
        if not 0 < len(m["camera"]) <= wire.DEVICE_ID_MAX:
            raise SchemaError("camera must be a device id")

    def __init__(self) -> None:
        self.matches: list[dict[str, Any]] = []

    def ingest(self, src: str, m: dict[str, Any]) -> None:
        self.matches.append({**m, "src": src})

    def query(self, q: dict[str, Any]) -> dict[str, Any]:
        if q.get("q") != "matches":
            raise RequestError("facefind queries: matches")
        return {"matches": sorted(self.matches, key=lambda m: m["ts"])}


# The one catalogue of application kinds: each names its metadata schema (the model's own
# SCHEMA, so proxy and application VM check the same thing) and its range checks.
APPS = {"parknet": ParkNetApp, "traffic": TrafficApp, "facefind": FaceFindApp}


def validate(kind: str, meta: object) -> dict[str, Any]:
    """The metadata if it fits the application kind's schema; SchemaError otherwise."""
    cls = APPS[kind]
    checked = check(meta, cls.SCHEMA)  # type: ignore[attr-defined]
    cls.validate(checked)  # type: ignore[attr-defined]
    return checked


def _point(q: dict[str, Any], key: str) -> float:
    value = q.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not -1000 <= value <= 1000:  # degrees; also refuses ints beyond any float
        raise RequestError(f"{key} must be a number of degrees")
    return float(value)


class _Link:
    """What the application VM knows of one (app, proxy) link across connections."""

    def __init__(self, epoch: str) -> None:
        self.epoch, self.next = epoch, 1


class _SinkConn(Conn):
    """A proxy's connection: the claimed (app, proxy, epoch) and nonce between `hello` and
    `auth`, then `link` once the proof held."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, LineSplitter(MAX_LINE))
        self.claim: tuple[str, str, str] | None = None
        self.nonce = ""
        self.link: tuple[str, str] | None = None


class AppVmService(LineServer):
    """The app role's service: the metadata listener plus `app_*` control ops.

    `key` is this VM's key (None: no proxy can ever authenticate, everything is refused)."""

    name = "appvm"
    thread_name = "appvm"
    max_line = MAX_LINE
    max_conns = 256
    max_out = 64 * 1024

    def __init__(self, host: str = "0.0.0.0", port: int = wire.METADATA_PORT,
                 key: str | None = None) -> None:
        super().__init__(host, port)
        self.key = key if wire.is_key(key) else None
        self.apps: dict[str, Any] = {}
        self.links: dict[tuple[str, str], _Link] = {}
        self.received: list[str] = []
        self.received_bytes = 0
        self.audit = dict.fromkeys(("bad_lines", "auth_refused", "unauthenticated",
                                    "schema_refused", "duplicates", "lost", "unknown_app"), 0)
        self.lock = threading.Lock()

    def new_conn(self, sock: socket.socket) -> _SinkConn:
        return _SinkConn(sock)

    def refusal(self) -> bytes:
        return wire.dumps({T: wire.F_ERROR, "error": "too many connections"})

    def handle_lines(self, conn: _SinkConn, lines: list[bytes | None]) -> bytes:  # type: ignore[override]
        """Each line's reply, then one cumulative ack if any meta line came (accepted,
        duplicate or refused: each is consumed)."""
        out, metas = b"", 0
        for line in lines:
            if conn.closing:
                break
            reply, meta = self._line(conn, line)
            metas += meta
            if reply is not None:
                out += wire.dumps(reply)
        if metas and conn.link is not None:
            out += wire.dumps({T: wire.F_ACK, "seq": self.links[conn.link].next - 1})
        return out

    def _line(self, conn: _SinkConn, line: bytes | None) -> tuple[dict[str, Any] | None, bool]:
        """The reply to one line (None: nothing but the read's ack), and whether it was a
        meta line of the authenticated link."""
        try:
            frame = wire.loads(line) if line is not None else "too long"
        except ValueError as exc:
            frame = str(exc)
        if not isinstance(frame, dict):
            return self._refuse(conn, "bad_lines", f"bad line: {str(frame)[:80]}"), False
        kind = frame.get(T)
        if kind == wire.M_META:
            if conn.link is None:
                return self._refuse(conn, "unauthenticated", "authenticate first"), False
            return self._meta(conn.link, frame), True
        if kind == wire.F_HELLO and conn.link is None and conn.claim is None:
            return self._hello(conn, frame), False
        if kind == wire.F_AUTH and conn.claim is not None:
            return self._auth(conn, frame.get("mac")), False
        return self._refuse(conn, "unauthenticated", f"unexpected {str(kind)[:20]!r}"), False

    def _refuse(self, conn: _SinkConn, counter: str, error: str) -> dict[str, Any]:
        """Count it; a peer that is not (yet) an authenticated sink is hung up on."""
        with self.lock:
            self.audit[counter] += 1
        if conn.link is None:
            conn.closing = True
            return {T: wire.F_REFUSED, "error": error}
        return {T: wire.F_ERROR, "error": error}

    def _hello(self, conn: _SinkConn, frame: dict[str, Any]) -> dict[str, Any]:
        app, proxy, epoch = frame.get("app"), frame.get("proxy"), frame.get("epoch")
        if not (isinstance(app, str) and isinstance(proxy, str) and isinstance(epoch, str)
                and all(0 < len(x) <= wire.NAME_MAX for x in (app, proxy, epoch))):
            return self._refuse(conn, "bad_lines", "hello needs app, proxy and epoch")
        if app not in self.apps:
            return self._refuse(conn, "unknown_app", f"no application {app[:40]!r} here")
        conn.claim, conn.nonce = (app, proxy, epoch), wire.new_nonce()
        return {T: wire.F_CHALLENGE, "nonce": conn.nonce}

    def _auth(self, conn: _SinkConn, mac: object) -> dict[str, Any]:
        assert conn.claim is not None
        (app, proxy, epoch), nonce = conn.claim, conn.nonce
        conn.claim, conn.nonce = None, ""
        if self.key is None or not wire.same(
                wire.sink_proof(wire.sink_key(self.key, app, proxy), app, proxy, nonce), mac):
            return self._refuse(conn, "auth_refused", f"{proxy!r} may not send {app!r} here")
        with self.lock:
            link = self.links.get((app, proxy))
            if link is None or link.epoch != epoch:  # a new sink: its lines count from 1
                link = self.links[(app, proxy)] = _Link(epoch)
        conn.link, conn.trusted = (app, proxy), True
        return {T: wire.F_WELCOME, "next": link.next}

    def _meta(self, key: tuple[str, str], frame: dict[str, Any]) -> dict[str, Any] | None:
        """Accept the link's next line exactly once (a duplicate is only counted)."""
        seq, app_name = frame.get("seq"), key[0]
        if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < wire.MAX_SEQ:
            with self.lock:
                self.audit["bad_lines"] += 1
            return {T: wire.F_ERROR, "error": "meta needs an integer 'seq' >= 1"}
        with self.lock:
            link, app = self.links[key], self.apps.get(app_name)
            if app is None:
                self.audit["unknown_app"] += 1
                return {T: wire.F_ERROR, "seq": seq, "error": f"no application {app_name!r}"}
            if seq < link.next:
                self.audit["duplicates"] += 1
                return None
            self.audit["lost"] += seq - link.next  # lines the sink dropped (overflow)
            link.next = seq + 1
            try:
                meta = validate(app.kind, frame.get("m"))
            except (SchemaError, KeyError, TypeError, AttributeError) as exc:
                self.audit["schema_refused"] += 1
                return {T: wire.F_ERROR, "seq": seq, "error": f"schema: {str(exc)[:120]}"}
            kept = wire.envelope(app_name, key[1], meta)
            self.received_bytes += len(kept) + 1
            if len(self.received) < MAX_KEPT:
                self.received.append(kept)
            app.ingest(key[1], meta)
        return None

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {"role": "app", "apps": {n: a.kind for n, a in self.apps.items()},
                    "received_lines": len(self.received),
                    "received_bytes": self.received_bytes, "metadata": dict(self.audit),
                    "server": self.stats()}

    def ops(self) -> dict[str, Any]:
        return {wire.OP_APP_CONFIGURE: self._op_configure, wire.OP_APP_QUERY: self._op_query,
                wire.OP_APP_RECEIVED: self._op_received}

    def _op_configure(self, req: dict[str, Any]) -> dict[str, Any]:
        name, kind = req.get("app"), req.get("kind")
        if not isinstance(name, str) or not 0 < len(name) <= wire.NAME_MAX \
                or not isinstance(kind, str) or kind not in APPS:
            raise RequestError(f"app_configure needs 'app' and a 'kind' in {sorted(APPS)}")
        with self.lock:
            if name not in self.apps:
                self.apps[name] = APPS[kind]()
        return {"app": name, "kind": kind, "port": self.port}

    def _op_query(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req.get("app")
        app = self.apps.get(name) if isinstance(name, str) else None
        if app is None:
            raise RequestError(f"no application {str(name)[:40]!r} here")
        with self.lock:
            answer: dict[str, Any] = app.query(req)
            return answer

    def _op_received(self, req: dict[str, Any]) -> dict[str, Any]:
        offset = req.get("offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise RequestError("offset must be a non-negative integer")
        with self.lock:
            chunk: list[str] = []
            size = 0
            for line in self.received[offset:offset + 500]:
                size += len(line)
                if chunk and size > MAX_REPLY_BYTES:
                    break
                chunk.append(line)
            return {"lines": chunk, "total": len(self.received),
                    "bytes": self.received_bytes, **self.audit, "next": offset + len(chunk)}
