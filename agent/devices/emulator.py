"""Device emulator: runs the devices of one spec file and speaks the proxy's protocol.

Spec (JSON):
    {"user": "alice", "directory": "/state/.../directory.json" | "proxy": "10.77.1.1",
     "port": 7071, "rate": 10, "ticks": 300, "report": "/tmp/alice-fog1.json",
     "lab_subnet": "10.77.0.0/16", "bridge": "br-vm",
     "sources": [{"kind": "parking", "gps": ID, "ultrasonic": ID, ...}, ...]}

Every tick (`rate` per second) each source emits one record per device, all with the same
timestamp. A `Device` keeps what is not yet acknowledged; after any reconnect it says
`hello`, learns the seq the proxy expects next, drops what the proxy already has and
resends the rest — so a proxy migrating (or restarting its connections) loses nothing and
gets nothing twice. The proxy's address comes from the orchestrator's directory file,
read again on every reconnect (the address changes when a user is moved to another proxy).
Every destination passes orchestrator.netguard first: inside a fog node's namespace only
lab addresses routed through the node's VM bridge are allowed.

The report (written every second and at exit) holds per device what was sent and
acknowledged, the hash chain of its records, and the ground truth the sources drew.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import random
import signal
import socket
import sys
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any

from agent.devices import world
from orchestrator.netguard import LabNetwork, NetworkPolicy, check_destination

MAX_UNACKED = 20000


def chain_step(chain: str, line: bytes) -> str:
    """Same hash chain as the proxy's (over each record line without its newline)."""
    return hashlib.sha256((chain + line.decode()).encode()).hexdigest()[:32]


class Device:
    """One device's connection, sequence numbers and resend queue."""

    def __init__(self, dev_id: str, resolve: Any, on_command: Any = None) -> None:
        self.id = dev_id
        self._resolve = resolve  # () -> (address, port)
        self._on_command = on_command
        self.next_seq = 1
        self.acked = 0
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.chain = ""
        self.sent_bytes = self.reconnects = self.resent = self.errors = 0
        self.refused: str | None = None
        self.lock = threading.Lock()
        self.sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"dev-{dev_id}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self.lock:
            self._drop_socket()
        self._thread.join(timeout=3)

    def emit(self, ts: float, value: dict[str, Any]) -> None:
        line = json.dumps({"t": "rec", "seq": self.next_seq, "ts": ts, "v": value},
                          separators=(",", ":")).encode()
        while len(self.unacked) >= MAX_UNACKED and not self._stop.is_set():
            time.sleep(0.05)  # back-pressure: the proxy is away for long
        with self.lock:
            self.unacked.append((self.next_seq, line))
            self.chain = chain_step(self.chain, line)
            self.next_seq += 1
            self.sent_bytes += len(line) + 1
            if self.sock is not None:
                self._send(line + b"\n")

    def _send(self, data: bytes) -> None:
        try:
            assert self.sock is not None
            self.sock.sendall(data)
        except OSError:
            self._drop_socket()

    def _drop_socket(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.sock.close()
            self.sock = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sock, reader = self._connect()
            except (OSError, ValueError) as exc:  # proxy away (migrating, moved) or refusing
                self.errors += 1
                if isinstance(exc, ValueError):
                    self.refused = str(exc)
                if self._stop.wait(0.5):
                    return
                continue
            self._read_loop(sock, reader)

    def _connect(self) -> tuple[socket.socket, Any]:
        address, port = self._resolve()
        sock = socket.create_connection((address, port), timeout=5)
        sock.settimeout(None)
        reader = sock.makefile("rb")
        sock.sendall(json.dumps({"t": "hello", "dev": self.id}).encode() + b"\n")
        reply = json.loads(reader.readline() or b"{}")
        if reply.get("t") != "welcome":
            sock.close()
            raise ValueError(f"proxy refused {self.id}: {reply.get('error', reply)}")
        with self.lock:
            self._trim(int(reply["next"]) - 1)
            backlog = b"".join(line + b"\n" for _, line in self.unacked)
            self.resent += len(self.unacked) if self.reconnects else 0
            self.reconnects += 1
            self.sock = sock
            self._send(backlog)
        return sock, reader

    def _read_loop(self, sock: socket.socket, reader: Any) -> None:
        while not self._stop.is_set():
            try:
                line = reader.readline()
            except (OSError, ValueError):
                line = b""
            if not line:
                break
            try:
                frame = json.loads(line)
            except ValueError:
                continue
            if frame.get("t") == "ack":
                with self.lock:
                    self._trim(int(frame["seq"]))
            elif frame.get("t") == "cmd" and self._on_command:
                self._on_command(self.id, frame.get("cmd"))
            elif frame.get("t") == "error":
                self.errors += 1
        with self.lock:
            if self.sock is sock:
                self._drop_socket()

    def _trim(self, upto: int) -> None:
        self.acked = max(self.acked, upto)
        while self.unacked and self.unacked[0][0] <= upto:
            self.unacked.popleft()

    def report(self) -> dict[str, Any]:
        with self.lock:
            return {"sent": self.next_seq - 1, "acked": self.acked,
                    "unacked": len(self.unacked), "chain": self.chain,
                    "sent_bytes": self.sent_bytes, "connects": self.reconnects,
                    "resent": self.resent, "errors": self.errors, "refused": self.refused}


# --- sources: what each kind of device measures ------------------------------------------

class Parking:
    """A car with a GPS and a side ultrasonic sensor, stopping `dwell` ticks at each spot."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.gps, self.us = spec["gps"], spec["ultrasonic"]
        self.spots = [world.spot_position(spec["street_lat"], spec["start_lon"], i)
                      for i in range(spec.get("spots", 10))]
        self.taken = world.occupancy(spec.get("seed", 1), len(self.spots))
        self.dwell = spec.get("dwell", 3)
        self.rng = random.Random(spec.get("seed", 1))
        self.truth: dict[str, bool] = {}

    def tick(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        i = (k // self.dwell) % len(self.spots)
        lat, lon = self.spots[i]
        self.truth[f"{lat:.4f},{lon:.4f}"] = not self.taken[i]
        noise = world.SPOT_DEG * 0.3
        fix = {"lat": lat + self.rng.uniform(-noise, noise),
               "lon": lon + self.rng.uniform(-noise, noise)}
        base = 60.0 if self.taken[i] else 300.0
        return [(self.gps, fix), (self.us, {"range_cm": base + self.rng.uniform(-15, 15)})]


class Drive:
    """A car with a GPS and a speedometer driving a route of areas, `dwell` ticks in each."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.gps, self.speed = spec["gps"], spec["speed"]
        self.route = [tuple(a) for a in spec["route"]]
        self.congested = {tuple(a) for a in spec.get("congested", [])}
        self.dwell = spec.get("dwell", 5)
        self.rng = random.Random(spec.get("seed", 2))
        self.truth: dict[str, list[float]] = {}

    def tick(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        row, col = self.route[(k // self.dwell) % len(self.route)]
        lat, lon = world.area_centre(row, col)
        spread = world.AREA_DEG * 0.3
        kmh = (8.0 + self.rng.uniform(-3, 3)) if (row, col) in self.congested \
            else (45.0 + self.rng.uniform(-5, 5))
        self.truth.setdefault(world.area_name(row, col), []).append(round(kmh, 2))
        fix = {"lat": lat + self.rng.uniform(-spread, spread),
               "lon": lon + self.rng.uniform(-spread, spread)}
        return [(self.gps, fix), (self.speed, {"kmh": kmh})]


class Camera:
    """A street camera; every `every`-th frame shows the child, the others passers-by."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.cam, self.lat, self.lon = spec["camera"], spec["lat"], spec["lon"]
        self.child, self.every = spec.get("child"), spec.get("every", 5)
        self.people = spec.get("people", [1, 2, 3, 4])
        self.truth: dict[str, Any] = {"sightings": 0, "frames": 0}

    def tick(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        if self.child is not None and k % self.every == self.every - 1:
            seed = self.child
            self.truth["sightings"] += 1
        else:
            seed = self.people[k % len(self.people)]
        px = world.face_image(seed, variant=k * 7919 + zlib.crc32(self.cam.encode()) % 1000)
        self.truth["frames"] += 1
        return [(self.cam, {"w": world.FACE_SIDE, "h": world.FACE_SIDE,
                            "px": base64.b64encode(px).decode(),
                            "lat": self.lat, "lon": self.lon})]


class Heart:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.dev = spec["device"]
        self.truth: dict[str, Any] = {}

    def tick(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        return [(self.dev, {"bpm": world.heart_rate(float(k))})]


class Actuator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.dev = spec["device"]
        self.truth: dict[str, Any] = {"commands": []}

    def tick(self, k: int) -> list[tuple[str, dict[str, Any]]]:
        return []


SOURCES = {"parking": Parking, "drive": Drive, "camera": Camera, "heart": Heart,
           "actuator": Actuator}
DEVICE_KEYS = ("gps", "ultrasonic", "speed", "camera", "device")


# --- running a spec ------------------------------------------------------------------------

def make_resolver(spec: dict[str, Any]) -> Any:
    subnet = ipaddress.IPv4Network(spec.get("lab_subnet", "127.0.0.0/8"))
    policy = NetworkPolicy(labs=(LabNetwork(subnet, spec.get("bridge", "br-vm")),))

    def resolve() -> tuple[str, int]:
        if "directory" in spec:
            entry = json.loads(Path(spec["directory"]).read_text())["users"][spec["user"]]
            address, port = entry["proxy"], int(entry.get("port", spec.get("port", 7071)))
        else:
            address, port = spec["proxy"], int(spec.get("port", 7071))
        return check_destination(address, policy), port
    return resolve


class Emulator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.sources = [SOURCES[s["kind"]](s) for s in spec["sources"]]
        resolve = make_resolver(spec)
        self.commands: list[dict[str, Any]] = []
        ids = [s[k] for s in spec["sources"] for k in DEVICE_KEYS if k in s]
        self.devices = {i: Device(i, resolve, self._command) for i in ids}
        self.stop = threading.Event()
        self.started = time.time()
        self.ticks = 0

    def _command(self, dev: str, cmd: Any) -> None:
        self.commands.append({"device": dev, "cmd": cmd, "at": time.time()})

    def run(self) -> dict[str, Any]:
        for dev in self.devices.values():
            dev.start()
        period = 1.0 / float(self.spec.get("rate", 10))
        total = int(self.spec.get("ticks", 100))
        next_at, last_report = time.monotonic(), 0.0
        while self.ticks < total and not self.stop.is_set():
            ts = round(time.time(), 3)
            for source in self.sources:
                for dev_id, value in source.tick(self.ticks):
                    self.devices[dev_id].emit(ts, value)
            self.ticks += 1
            if time.monotonic() - last_report > 1.0:
                self.write_report("running")
                last_report = time.monotonic()
            next_at += period
            self.stop.wait(max(0.0, next_at - time.monotonic()))
        self._drain(float(self.spec.get("drain_s", 60)))
        report = self.write_report("done")
        for dev in self.devices.values():
            dev.stop()
        return report

    def _drain(self, timeout_s: float) -> None:
        """Wait until every record is acknowledged (or the timeout)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if all(d.acked == d.next_seq - 1 for d in self.devices.values()):
                return
            time.sleep(0.1)

    def write_report(self, status: str) -> dict[str, Any]:
        report = {"status": status, "user": self.spec.get("user"), "ticks": self.ticks,
                  "elapsed_s": round(time.time() - self.started, 3),
                  "devices": {i: d.report() for i, d in self.devices.items()},
                  "truth": [{"kind": s["kind"], **src.truth}
                            for s, src in zip(self.spec["sources"], self.sources, strict=True)],
                  "commands": self.commands}
        path = self.spec.get("report")
        if path:
            tmp = Path(path + ".tmp")
            tmp.write_text(json.dumps(report))
            tmp.replace(path)
        return report


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m agent.devices SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(args[0]).read_text())
        emulator = Emulator(spec)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"agent.devices: bad spec {args[0]}: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: emulator.stop.set())
    report = emulator.run()
    complete = all(d["acked"] == d["sent"] for d in report["devices"].values())
    return 0 if complete else 1
