"""Device emulator: runs the devices of one spec file and speaks the proxy's protocol.

Spec (JSON):
    {"user": "alice", "directory": "/state/.../directory.json" | "proxy": "10.77.1.1",
     "port": 7071, "rate": 10, "ticks": 300, "report": "/tmp/alice-fog1.json",
     "lab_subnet": "10.77.0.0/16", "bridge": "eth0",
     "keys": {ID: KEY, ...},
     "sources": [{"kind": "parking", "gps": ID, "ultrasonic": ID, ...}, ...]}

`keys` holds each device's key (64 hex characters, given at `device add`): after `hello`
the proxy sends a nonce and the device answers with wire.device_proof. A device without a
key cannot authenticate; it keeps being refused (and says so in the report).

Every tick (`rate` per second) each source emits one record per device, all with the same
timestamp. A `Device` keeps what is not yet acknowledged; after any reconnect it says
`hello`, learns the seq the proxy expects next, drops what the proxy already has and
resends the rest — so a proxy migrating (or restarting its connections) loses nothing and
gets nothing twice. The proxy's address comes from the orchestrator's directory file,
read again on every reconnect: the device's own entry if it has one (its devices were
decomposed onto a mobile proxy), else its user's. A proxy that no longer serves a device
answers `moved`; the device then asks the directory again at once (and, if the directory
still names the same proxy — the handover is under way — a moment later).
Every destination passes orchestrator.netguard first: only lab addresses routed through
`bridge` are allowed (in the lab, the devices namespace's link onto its node's VM bridge,
orchestrator.lab.topology.DEVICE_LINK).

Roaming: with `"attachments": PATH` in the spec, PATH is a JSON file {device: network
namespace path} saying behind which fog node (BS) each device's radio is now; whoever plays
the world rewrites it when devices roam. A device whose attachment changes loses its
connection (as a real radio would), moves its own thread into the new namespace and
reconnects from there — to whichever proxy the directory names.

The report (written every second and at exit) holds per device what was sent and
acknowledged, the hash chain of its records, which proxies served it (in order), the
longest time it was without a proxy, and the ground truth the sources drew.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import os
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
from agent.guest.edgeiot_agent import wire
from orchestrator.netguard import LabNetwork, NetworkPolicy, check_destination

MAX_UNACKED = 20000
CLONE_NEWNET = 0x40000000
RETRY_S = 0.5  # after a failed connect or a refusal
MOVED_RETRY_S = 0.1  # the directory still names the proxy that said `moved`
KEEPALIVE_S = 15.0  # a device with nothing to say pings (the proxy closes idle connections)
HANDSHAKE_TIMEOUT_S = 5.0
T = wire.FRAME_KIND
chain_step = wire.chain_step  # the proxy's hash chain, from the one wire contract


class Moved(Exception):
    """The proxy does not serve this device (any more, or not yet)."""

    def __init__(self, target: tuple[str, int]) -> None:
        super().__init__(f"moved away from {target[0]}:{target[1]}")
        self.target = target


def enter_netns(path: str) -> None:
    """Move the calling thread — only it — into the network namespace at `path`.

    NOTE: setns(2) acts on the calling thread, so each device's thread can sit behind its
    own fog node; processes it starts (netguard's `ip route get`) inherit its namespace.
    """
    import ctypes  # only roaming devices need it

    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def roaming(attached: dict[str, str | None], wanted: dict[str, str]) -> list[str]:
    """Devices whose radio moved: attached somewhere, and wanted somewhere else now."""
    return sorted(d for d, now in attached.items()
                  if now is not None and wanted.get(d, now) != now)


class Attachments:
    """The attachments file ({device: netns path}), re-read whenever it changes (its
    writer replaces it atomically, so a new inode says so even within one mtime tick)."""

    def __init__(self, path: str | None) -> None:
        self.path = Path(path) if path else None
        self.current: dict[str, str] = {}
        self._stamp: tuple[int, int, int] | None = None

    def poll(self) -> dict[str, str] | None:
        """The attachments if the file changed since the last poll, else None."""
        if self.path is None:
            return None
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return None
            content = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # absent, or being rewritten: next time
        self._stamp = stamp
        self.current = {str(d): str(ns) for d, ns in content.items()}
        return self.current

    def of(self, dev: str) -> str | None:
        return self.current.get(dev)


class Device:
    """One device's connection, sequence numbers and resend queue."""

    def __init__(self, dev_id: str, resolve: Any, on_command: Any = None,
                 clock: Any = time.monotonic, attach: Any = None,
                 key: str | None = None) -> None:
        self.id = dev_id
        self.key = key
        self._resolve = resolve  # () -> (address, port)
        self._on_command = on_command
        self._clock = clock
        self._attach = attach  # () -> netns path the radio is behind now, or None
        self.netns: str | None = None
        self.next_seq = 1
        self.acked = 0
        self.unacked: deque[tuple[int, bytes]] = deque()
        self.chain = ""
        self.sent_bytes = self.reconnects = self.resent = self.errors = self.moved = 0
        self.refused: str | None = None
        self.served_by: list[str] = []  # proxies in the order they served this device
        self.lost_at: float | None = None  # when the last connection broke
        self.max_gap_s = 0.0  # the longest time between losing a proxy and a welcome
        self.last_sent = clock()
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
        line = wire.record_line(self.next_seq, ts, value)
        while len(self.unacked) >= MAX_UNACKED and not self._stop.is_set():
            time.sleep(0.05)  # back-pressure: the proxy is away for long
        with self.lock:
            self.unacked.append((self.next_seq, line))
            self.chain = chain_step(self.chain, line)
            self.next_seq += 1
            self.sent_bytes += len(line) + 1
            if self.sock is not None:
                self._send(line + b"\n")

    def keepalive(self) -> None:
        """Ping if nothing was sent for KEEPALIVE_S (an actuator may never send a record)."""
        with self.lock:
            if self.sock is not None and self._clock() - self.last_sent >= KEEPALIVE_S:
                self._send(wire.dumps({T: wire.F_PING}))

    def _send(self, data: bytes) -> None:
        try:
            assert self.sock is not None
            self.sock.sendall(data)
            self.last_sent = self._clock()
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
        last_moved: tuple[str, int] | None = None
        while not self._stop.is_set():
            try:
                sock, reader = self._connect()
            except Moved as exc:  # ask the directory again, at once if it changed
                self.moved += 1
                wait = MOVED_RETRY_S if exc.target == last_moved else 0.0
                last_moved = exc.target
                if self._stop.wait(wait):
                    return
                continue
            except (OSError, ValueError) as exc:  # proxy away (migrating) or refusing
                self.errors += 1
                if isinstance(exc, ValueError):
                    self.refused = str(exc)
                if self._stop.wait(RETRY_S):
                    return
                continue
            last_moved = None
            self._read_loop(sock, reader)
            if self.lost_at is None:
                self.lost_at = self._clock()

    def roam(self) -> None:
        """The radio moved to another BS: this connection is lost."""
        with self.lock:
            self._drop_socket()

    def _connect(self) -> tuple[socket.socket, Any]:
        wanted = self._attach() if self._attach is not None else None
        if wanted is not None and wanted != self.netns:
            enter_netns(wanted)
            self.netns = wanted
        address, port = self._resolve()
        sock = socket.create_connection((address, port), timeout=HANDSHAKE_TIMEOUT_S)
        reader = sock.makefile("rb")
        try:
            reply = self._handshake(sock, reader)
        except BaseException:
            sock.close()
            raise
        if reply.get(T) == wire.F_MOVED:
            sock.close()
            raise Moved((address, port))
        sock.settimeout(None)
        self.refused = None
        self._welcomed(str(reply.get("proxy", address)))
        with self.lock:
            self._trim(int(reply["next"]) - 1)
            backlog = b"".join(line + b"\n" for _, line in self.unacked)
            self.resent += len(self.unacked) if self.reconnects else 0
            self.reconnects += 1
            self.sock = sock
            self._send(backlog)
        return sock, reader

    def _handshake(self, sock: socket.socket, reader: Any) -> dict[str, Any]:
        """hello, then the proof for the proxy's nonce: `welcome` or `moved` (else
        ValueError, the proxy's refusal)."""
        sock.sendall(wire.dumps({T: wire.F_HELLO, "dev": self.id}))
        reply = self._reply(reader)
        if reply.get(T) == wire.F_CHALLENGE:
            if self.key is None:
                raise ValueError(f"no key for {self.id}: cannot answer the proxy's challenge")
            proof = wire.device_proof(self.key, self.id, str(reply.get("nonce", "")))
            sock.sendall(wire.dumps({T: wire.F_AUTH, "dev": self.id, "mac": proof}))
            reply = self._reply(reader)
        if reply.get(T) not in (wire.F_WELCOME, wire.F_MOVED):
            raise ValueError(f"proxy refused {self.id}: {reply.get('error', reply)}")
        return reply

    @staticmethod
    def _reply(reader: Any) -> dict[str, Any]:
        line = reader.readline(wire.MAX_FRAME_BYTES + 1)
        try:
            reply = wire.loads(line) if line.strip() else {}
        except ValueError:
            reply = {}
        return reply if isinstance(reply, dict) else {}

    def _welcomed(self, proxy: str) -> None:
        if not self.served_by or self.served_by[-1] != proxy:
            self.served_by.append(proxy)
        if self.lost_at is not None:
            self.max_gap_s = max(self.max_gap_s, self._clock() - self.lost_at)
            self.lost_at = None

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
            if not isinstance(frame, dict):
                continue
            if frame.get(T) == wire.F_ACK:
                with self.lock:
                    self._trim(int(frame["seq"]))
            elif frame.get(T) == wire.F_CMD and self._on_command:
                self._on_command(self.id, frame.get("cmd"))
            elif frame.get(T) == wire.F_ERROR:
                self.errors += 1
            elif frame.get(T) in (wire.F_MOVED, wire.F_REFUSED):
                break  # the proxy let this device go: reconnect via the directory
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
                    "resent": self.resent, "errors": self.errors, "refused": self.refused,
                    "moved": self.moved, "served_by": list(self.served_by),
                    "max_gap_s": round(self.max_gap_s, 3), "attached": self.netns}


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

def lookup(directory: dict[str, Any], user: str, dev: str) -> dict[str, Any]:
    """A device's directory entry: its own if it has one, else its user's."""
    entry = (directory.get(wire.DIR_DEVICES, {}).get(dev)
             or directory.get(wire.DIR_USERS, {}).get(user))
    if entry is None:
        raise ValueError(f"the directory has no proxy for {dev} (user {user})")
    return dict(entry)


def make_resolver(spec: dict[str, Any]) -> Any:
    """dev → (address, port) of its proxy, read afresh each call, netguard-checked."""
    subnet = ipaddress.IPv4Network(spec.get("lab_subnet", "127.0.0.0/8"))
    policy = NetworkPolicy(labs=(LabNetwork(subnet, spec.get("bridge", "br-vm")),))

    def resolve(dev: str) -> tuple[str, int]:
        if "directory" in spec:
            directory = json.loads(Path(spec["directory"]).read_text())
            entry = lookup(directory, spec["user"], dev)
            address = entry[wire.DIR_PROXY]
            port = int(entry.get(wire.DIR_PORT, spec.get("port", wire.STREAM_PORT)))
        else:
            address, port = spec["proxy"], int(spec.get("port", wire.STREAM_PORT))
        return check_destination(address, policy), port
    return resolve


class Emulator:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.sources = [SOURCES[s["kind"]](s) for s in spec["sources"]]
        resolve = make_resolver(spec)
        self.commands: list[dict[str, Any]] = []
        ids = [s[k] for s in spec["sources"] for k in DEVICE_KEYS if k in s]
        self.attachments = Attachments(spec.get("attachments"))
        self.attachments.poll()
        keys = spec.get(wire.SPEC_KEYS) or {}
        self.devices = {i: Device(i, functools.partial(resolve, i), self._command,
                                  attach=functools.partial(self.attachments.of, i),
                                  key=keys.get(i) if wire.is_key(keys.get(i)) else None)
                        for i in ids}
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
            self._follow_radios()
            for dev in self.devices.values():
                dev.keepalive()
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

    def _follow_radios(self) -> None:
        wanted = self.attachments.poll()
        if wanted is not None:
            for dev in roaming({d.id: d.netns for d in self.devices.values()}, wanted):
                self.devices[dev].roam()

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
