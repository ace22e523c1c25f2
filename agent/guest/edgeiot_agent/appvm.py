"""The application VM's role: receive metadata from proxy VMs, answer users' queries.

Why: an application VM (local in a fog node, remote in the cloud, or an add-on created for
an event) only ever sees metadata. It listens on port 7072 for JSON lines
`{"app", "src", "m"}` from proxies, keeps what its application needs, and answers queries
over the control port (`app_query`). It also keeps every line it received (bounded), so a
test can audit exactly what reached it (`app_received`).

Applications: ParkNet (request / reserve a free spot near a point), traffic (best route
between two areas, avoiding congested ones) and face finding (matches of the missing child).
"""

from __future__ import annotations

import heapq
import json
import math
import threading

from .control import RequestError
from .lineserver import Conn, LineServer
from .metadata import APP_PORT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_LINE = 16 * 1024
MAX_KEPT = 20000
MAX_GRID_CELLS = 40000  # a route query never searches a larger box


class ParkNetApp:
    kind = "parknet"

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
            k = int(q.get("k", 3))
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
    row, col = area[1:].split("_")
    return int(row), int(col)


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

    def __init__(self) -> None:
        self.matches: list[dict[str, Any]] = []

    def ingest(self, src: str, m: dict[str, Any]) -> None:
        self.matches.append({**m, "src": src})

    def query(self, q: dict[str, Any]) -> dict[str, Any]:
        if q.get("q") != "matches":
            raise RequestError("facefind queries: matches")
        return {"matches": sorted(self.matches, key=lambda m: m["ts"])}


APPS = {"parknet": ParkNetApp, "traffic": TrafficApp, "facefind": FaceFindApp}


def _point(q: dict[str, Any], key: str) -> float:
    value = q.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"{key} must be a number")
    return float(value)


class AppVmService(LineServer):
    """The app role's service: metadata listener plus `app_*` control ops.

    Sends nothing back; a line longer than `MAX_LINE` is dropped and counted as bad."""

    name = "appvm"
    thread_name = "appvm"
    max_line = MAX_LINE

    def __init__(self, host: str = "0.0.0.0", port: int = APP_PORT) -> None:
        super().__init__(host, port)
        self.apps: dict[str, Any] = {}
        self.received: list[str] = []
        self.received_bytes = self.bad_lines = self.unknown_app = 0
        self.lock = threading.Lock()

    def handle_line(self, conn: Conn, line: bytes | None) -> None:
        if line is None:
            self.bad_lines += 1
        else:
            self.ingest_line(line)

    def ingest_line(self, line: bytes) -> None:
        """Record the line as received, then hand valid metadata to its application."""
        with self.lock:
            self.received_bytes += len(line) + 1
            if len(self.received) < MAX_KEPT:
                self.received.append(line.decode("utf-8", "replace"))
            try:
                msg = json.loads(line)
                app = self.apps.get(msg["app"])
                if app is None:
                    self.unknown_app += 1
                    return
                app.ingest(str(msg["src"]), msg["m"])
            except (ValueError, KeyError, TypeError, AttributeError):
                self.bad_lines += 1

    def status(self) -> dict[str, Any]:
        return {"role": "app", "apps": {n: a.kind for n, a in self.apps.items()},
                "received_lines": len(self.received), "received_bytes": self.received_bytes}

    def ops(self) -> dict[str, Any]:
        return {"app_configure": self._op_configure, "app_query": self._op_query,
                "app_received": self._op_received}

    def _op_configure(self, req: dict[str, Any]) -> dict[str, Any]:
        name, kind = req.get("app"), req.get("kind")
        if not isinstance(name, str) or kind not in APPS:
            raise RequestError(f"app_configure needs 'app' and a 'kind' in {sorted(APPS)}")
        with self.lock:
            if name not in self.apps:
                self.apps[name] = APPS[kind]()
        return {"app": name, "kind": kind, "port": self.port}

    def _op_query(self, req: dict[str, Any]) -> dict[str, Any]:
        app = self.apps.get(str(req.get("app")))
        if app is None:
            raise RequestError(f"no application {req.get('app')!r} here")
        with self.lock:
            return app.query(req)

    def _op_received(self, req: dict[str, Any]) -> dict[str, Any]:
        offset = req.get("offset", 0)
        if not isinstance(offset, int) or offset < 0:
            raise RequestError("offset must be a non-negative integer")
        with self.lock:
            chunk = self.received[offset:offset + 500]
            return {"lines": chunk, "total": len(self.received),
                    "bytes": self.received_bytes, "bad_lines": self.bad_lines,
                    "next": offset + len(chunk)}
