"""The proxy VM's data plane: device streams in, metadata out.

Why this shape: devices connect over TCP (port 7071), say `hello` with their ID, prove
they hold the device's key (the proxy answers `challenge` with a nonce, the device `auth`
with wire.device_proof; the key came with `device_register`), and send records with
per-device sequence numbers. Until a connection has proved it is the device's, nothing it
sends touches any device's state: an impostor is `refused` and counted (`auth_refused`),
and the real device's connection, `next` and actuator commands are not disturbed.
The proxy accepts a record only if its seq is the next one expected for that device,
acknowledges cumulatively, and tells a reconnecting device which seq it expects next — so a
device that resends everything unacknowledged after a reconnect (e.g. across a live
migration's downtime) delivers every record exactly once.
Each accepted record is classified by the device's registered data type, appended to the
bounded raw buffer, and fed to the installed models whose grants admit its type; their
metadata is schema-checked and shipped to the application VMs. Nothing a device sends can
stop the loop: bad frames get an `error` reply and are counted.

Handover (decomposition, composition): a device's stream state moves between proxies
through the orchestrator. `device_release` stops accepting the devices here and returns
each one's snapshot (profile, `next`, `chain`, counters) in the same critical section, so
nothing is accepted after the snapshot; `device_adopt` installs snapshots on the new proxy,
so sequence numbers simply continue. A device this proxy does not serve right now (released,
or registered `held` until its state arrives) is answered `moved` and disconnected: the
device asks the directory again at once. Keys never travel in snapshots: the orchestrator
registers the devices, keys included, on the adopting proxy (`held`) before adopting.
"""

from __future__ import annotations

import socket
import threading

from . import wire
from .buffer import RawBuffer
from .classify import DATA_TYPES, ClassifyError, classify
from .codec import MAX_FRAME_BYTES, FrameError, LineSplitter, decode_frame, encode
from .control import RequestError
from .handover import COUNTERS, SnapshotError, parse_snapshot
from .lineserver import Conn, LineServer
from .metadata import MetadataSink, SchemaError, check
from .models import MODELS, Record
from .permissions import Gate, PermissionDenied, check_grants

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STREAM_PORT = wire.STREAM_PORT
MAX_DEVICES = 512  # per proxy: `device_register` beyond it is refused
MAX_CONNECTIONS = MAX_DEVICES + 128  # every device at once, plus handshakes in flight
ROLES = wire.DEVICE_ROLES
T = wire.FRAME_KIND


class DeviceState:
    """What the proxy knows of one device: its profile and its stream's progress."""

    def __init__(self, dev: str, dtype: str, user: str, role: str, group: str = "",
                 away: bool = False, key: str | None = None) -> None:
        self.dev, self.dtype, self.user, self.role = dev, dtype, user, role
        self.key = key  # None: no connection can authenticate as this device
        self.group = group or user
        self.next = 1
        self.accepted = self.duplicates = self.invalid = self.raw_bytes = 0
        self.chain = ""
        self.away = away  # not served here now: released, or held until its state arrives
        self.conn: _Conn | None = None

    def stats(self) -> dict[str, Any]:
        return {"type": self.dtype, "user": self.user, "role": self.role, "group": self.group,
                "next": self.next, "accepted": self.accepted,
                "duplicates": self.duplicates, "invalid": self.invalid,
                "raw_bytes": self.raw_bytes, "chain": self.chain, "away": self.away,
                "connected": self.conn is not None}

    def snapshot(self) -> dict[str, Any]:
        """Profile and stream progress: what another proxy needs to continue the stream."""
        return {"id": self.dev, "type": self.dtype, "user": self.user, "role": self.role,
                "group": self.group, "next": self.next, "chain": self.chain,
                **{key: getattr(self, key) for key in COUNTERS}}

    def restore(self, snap: dict[str, Any]) -> None:
        self.next, self.chain = snap["next"], snap["chain"]
        for key in COUNTERS:
            setattr(self, key, snap[key])
        self.away = False


class Installed:
    """A model installed for one application, with its gate, sink and counters."""

    def __init__(self, app: str, name: str, model: Any, gate: Gate, sink: MetadataSink) -> None:
        self.app, self.name, self.model, self.gate, self.sink = app, name, model, gate, sink
        self.raw_bytes = self.emitted = self.meta_bytes = 0
        self.schema_errors = self.model_errors = 0

    def stats(self) -> dict[str, Any]:
        return {"model": self.name, "reads": sorted(self.gate.allowed),
                "raw_bytes": self.raw_bytes, "emitted": self.emitted,
                "meta_bytes": self.meta_bytes, "schema_errors": self.schema_errors,
                "model_errors": self.model_errors, "sink": self.sink.status()}


class _Conn(Conn):
    """A device's connection: `device` once it proved it is that device's; in between
    `hello` and `auth`, the device it claims to be and the nonce it must sign."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, LineSplitter(MAX_FRAME_BYTES))
        self.device: DeviceState | None = None
        self.claimed: DeviceState | None = None
        self.nonce = ""


class ProxyCore:
    """Ingest logic without sockets: registration, exactly-once, classify, buffer, models."""

    def __init__(self, name: str, buffer: RawBuffer | None = None) -> None:
        self.name = name
        self.buffer = buffer or RawBuffer()
        self.devices: dict[str, DeviceState] = {}
        self.models: dict[str, Installed] = {}
        self.frame_errors = self.auth_refused = 0
        self.max_devices = MAX_DEVICES
        self.lock = threading.RLock()

    # --- registration and models -------------------------------------------------------

    def register(self, dev: str, dtype: str, user: str, role: str = "sensor",
                 group: str = "", held: bool = False, key: str | None = None) -> None:
        """Know a device's profile and key; `held`: a new device waits for its state
        (handover). Registering a known device again may give it a new key."""
        self.register_many([{"id": dev, "type": dtype, "user": user, "role": role,
                             "group": group, "key": key}], held)

    def register_many(self, profiles: list[dict[str, Any]], held: bool = False) -> int:
        """Register checked profiles all or none, within `max_devices`."""
        with self.lock:
            new = {p["id"] for p in profiles} - set(self.devices)
            if len(self.devices) + len(new) > self.max_devices:
                raise RequestError(f"a proxy serves at most {self.max_devices} devices")
            for p in profiles:
                _check_profile(p)
                known = self.devices.get(p["id"])
                if known is not None and (known.dtype, known.user) != (p["type"], p["user"]):
                    raise RequestError(f"device {p['id']!r} is registered with another "
                                       "profile")
            for p in profiles:
                known = self.devices.get(p["id"])
                if known is None:
                    self.devices[p["id"]] = DeviceState(p["id"], p["type"], p["user"],
                                                        p["role"], p["group"], held, p["key"])
                elif p["key"] is not None:
                    known.key = p["key"]
            return len(profiles)

    def release(self, devs: list[str]) -> list[tuple[dict[str, Any], _Conn | None]]:
        """Stop serving these devices; each one's final snapshot and its connection (to be
        closed). Idempotent: a device already away is returned as it was left."""
        with self.lock:
            unknown = [d for d in devs if d not in self.devices]
            if unknown:
                raise RequestError(f"unknown devices: {', '.join(unknown)}")
            out = []
            for dev in devs:
                state = self.devices[dev]
                state.away, conn, state.conn = True, state.conn, None
                out.append((state.snapshot(), conn))
            return out

    def adopt(self, snapshots: list[Any]) -> int:
        """Serve these devices from their snapshots; all or none. A device this proxy
        serves right now is refused: two proxies must never accept the same stream."""
        try:
            snaps = [parse_snapshot(s) for s in snapshots]
        except SnapshotError as exc:
            raise RequestError(f"bad snapshot: {exc}") from None
        with self.lock:
            new = {snap["id"] for snap in snaps} - set(self.devices)
            if len(self.devices) + len(new) > self.max_devices:
                raise RequestError(f"a proxy serves at most {self.max_devices} devices")
            for snap in snaps:
                known = self.devices.get(snap["id"])
                if known is not None and not known.away:
                    raise RequestError(f"device {snap['id']!r} is served here; "
                                       "release it first")
                if known is not None and (known.dtype, known.user) != (snap["type"],
                                                                       snap["user"]):
                    raise RequestError(f"device {snap['id']!r} is registered with "
                                       "another profile")
            for snap in snaps:
                state = self.devices.get(snap["id"])
                if state is None:
                    state = DeviceState(snap["id"], snap["type"], snap["user"], snap["role"],
                                        snap["group"])
                    self.devices[snap["id"]] = state
                state.restore(snap)
            return len(snaps)

    def install(self, app: str, model: str, grants: list[str], params: dict[str, Any],
                sink: MetadataSink) -> dict[str, Any]:
        cls = MODELS.get(model)
        if cls is None:
            raise PermissionDenied(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        allowed = check_grants(model, cls.READS, grants)
        instance = cls(params)
        with self.lock:
            old = self.models.pop(app, None)
            self.models[app] = Installed(app, model, instance, Gate(allowed), sink)
        if old is not None:
            old.sink.close()
        return {"app": app, "model": model, "reads": sorted(allowed)}

    def remove(self, app: str) -> bool:
        with self.lock:
            old = self.models.pop(app, None)
        if old is not None:
            old.sink.close()
        return old is not None

    # --- the stream --------------------------------------------------------------------

    def hello(self, dev: str) -> tuple[DeviceState | None, dict[str, Any]]:
        """The challenge for a device this proxy serves (changes nothing), else the refusal
        or `moved`."""
        with self.lock:
            state = self.devices.get(dev)
        if state is None:
            self.auth_refused += 1
            return None, {T: wire.F_REFUSED, "error": f"unknown device {dev!r}"}
        if state.away:
            return None, moved(dev)
        return state, {T: wire.F_CHALLENGE, "dev": dev, "nonce": wire.new_nonce()}

    def authenticate(self, state: DeviceState, nonce: str, mac: str) -> dict[str, Any]:
        """`welcome` if `mac` proves the device's key for this nonce; else `refused`
        (counted) or `moved`. Changes no device state either way."""
        with self.lock:
            key = state.key
            if key is None or not wire.same(wire.device_proof(key, state.dev, nonce), mac):
                self.auth_refused += 1
                return {T: wire.F_REFUSED, "error": f"device {state.dev!r}: bad proof"}
            if state.away:
                return moved(state.dev)
            return {T: wire.F_WELCOME, "dev": state.dev, "next": state.next,
                    "proxy": self.name}

    def record(self, state: DeviceState, frame: dict[str, Any], line: bytes) -> dict[str, Any]:
        """Accept the next record exactly once; the reply is the cumulative ack (or error)."""
        with self.lock:
            if state.away:  # released while this connection was still open
                return moved(state.dev)
            seq = frame["seq"]
            if seq < state.next:
                state.duplicates += 1
                return {T: wire.F_ACK, "seq": state.next - 1}
            if seq > state.next:
                return {T: wire.F_ACK, "seq": state.next - 1, "gap": seq}
            try:
                value = classify(state.dtype, frame["v"])
            except ClassifyError as exc:
                state.invalid += 1
                # NOTE: refused for good (resending would not fix it); only the device's
                # own authenticated connection gets here, so only it can burn its seqs.
                state.next += 1
                return {T: wire.F_ERROR, "seq": seq, "error": str(exc)}
            state.next += 1
            state.accepted += 1
            state.raw_bytes += len(line)
            state.chain = wire.chain_step(state.chain, line)
            self.buffer.append(line)
            record = Record(state.dev, state.user, state.dtype, seq, frame["ts"], value,
                            state.group)
            self._run_models(record, len(line))
            return {T: wire.F_ACK, "seq": seq}

    def _run_models(self, record: Record, size: int) -> None:
        for inst in self.models.values():
            if not inst.gate.admits(record.dtype):
                continue
            inst.raw_bytes += size
            try:
                out = inst.model.feed(record)
            except Exception:  # a buggy model must not stop ingest
                inst.model_errors += 1
                continue
            for meta in out:
                try:
                    checked = check(meta, inst.model.SCHEMA)
                except SchemaError:
                    inst.schema_errors += 1
                    continue
                inst.emitted += 1
                inst.meta_bytes += inst.sink.send(checked)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"devices": {d: s.stats() for d, s in self.devices.items()},
                    "models": {a: m.stats() for a, m in self.models.items()},
                    "buffer": self.buffer.status(), "frame_errors": self.frame_errors,
                    "auth_refused": self.auth_refused}


def moved(dev: str) -> dict[str, Any]:
    return {T: wire.F_MOVED, "dev": dev,
            "error": f"device {dev!r} is not served by this proxy: ask the directory again"}


def _check_profile(p: dict[str, Any]) -> None:
    """A profile as `register_many` takes it (every field present, key None or a key)."""
    dev = p["id"]
    if not isinstance(dev, str) or not 0 < len(dev) <= wire.DEVICE_ID_MAX:
        raise RequestError(f"a device id is 1..{wire.DEVICE_ID_MAX} characters")
    if p["type"] not in DATA_TYPES:
        raise RequestError(f"unknown data type {str(p['type'])[:40]!r}")
    if p["role"] not in ROLES:
        raise RequestError(f"unknown device role {str(p['role'])[:40]!r}")
    if not isinstance(p["user"], str) or not p["user"] or not isinstance(p["group"], str):
        raise RequestError("a device needs a user (and a group, if any, is text)")
    if p["key"] is not None and not wire.is_key(p["key"]):
        raise RequestError(f"device {dev!r}: a key is 64 lowercase hex characters")


class StreamService(LineServer):
    """The proxy role's service: the stream listener plus its control ops."""

    name = "streams"
    thread_name = "streams"
    max_line = MAX_FRAME_BYTES
    max_conns = MAX_CONNECTIONS
    max_out = 256 * 1024

    def __init__(self, name: str, host: str = "0.0.0.0", port: int = STREAM_PORT,
                 buffer_bytes: int = 4 * 1024 * 1024) -> None:
        super().__init__(host, port)
        self.core = ProxyCore(name, RawBuffer(buffer_bytes))

    def stop(self) -> None:
        super().stop()
        for inst in list(self.core.models.values()):
            inst.sink.close()

    def alive(self) -> bool:
        """The stream thread and every model's sink thread."""
        return super().alive() and all(i.sink.alive() for i in list(self.core.models.values()))

    def revive(self) -> None:
        if not super().alive():
            self._start_thread()
        for inst in list(self.core.models.values()):
            if not inst.sink.alive():
                inst.sink.revive()

    def new_conn(self, sock: socket.socket) -> _Conn:
        return _Conn(sock)

    def refusal(self) -> bytes:
        return encode({T: wire.F_ERROR, "error": "too many connections"})

    def conn_closed(self, conn: _Conn) -> None:  # type: ignore[override]
        if conn.device is not None and conn.device.conn is conn:
            conn.device.conn = None

    def handle_lines(self, conn: _Conn, lines: list[bytes | None]) -> bytes:  # type: ignore[override]
        out, last_ack, end = b"", None, b""
        for line in lines:
            reply = self._frame(conn, line)
            if reply is None:
                continue
            if reply[T] == wire.F_ACK:
                last_ack = reply  # cumulative: one ack per read is enough
                continue
            if reply[T] in (wire.F_MOVED, wire.F_REFUSED):  # the last word on this connection
                conn.closing, end = True, encode(reply)
                break
            out += encode(reply)
            if len(out) > self.max_out:
                break
        if last_ack is not None:
            out += encode(last_ack)
        return out + end

    def _frame(self, conn: _Conn, line: bytes | None) -> dict[str, Any] | None:
        try:
            if line is None:
                raise FrameError("frame too long")
            frame = decode_frame(line)
        except FrameError as exc:
            self.core.frame_errors += 1
            return {T: wire.F_ERROR, "error": str(exc)}
        kind = frame[T]
        if kind == wire.F_REC:
            device = conn.device
            if device is None or (device.conn is not conn and not device.away):
                self.core.frame_errors += 1
                return {T: wire.F_ERROR, "error": "authenticate first: hello, then auth"}
            assert line is not None  # a decoded frame came from a line
            return self.core.record(device, frame, line)
        if kind == wire.F_HELLO:
            return self._hello(conn, frame["dev"])
        if kind == wire.F_AUTH:
            return self._auth(conn, frame["dev"], frame["mac"])
        return {T: wire.F_PONG}

    def _hello(self, conn: _Conn, dev: str) -> dict[str, Any]:
        """Start (or restart) this connection's handshake; nothing changes for any device
        until `auth` proves the key."""
        if conn.device is not None and conn.device.conn is conn:
            conn.device.conn = None  # the device itself starts over on its own connection
        conn.device = None
        state, reply = self.core.hello(dev)
        conn.claimed, conn.nonce = state, reply.get("nonce", "")
        return reply

    def _auth(self, conn: _Conn, dev: str, mac: str) -> dict[str, Any]:
        state, nonce = conn.claimed, conn.nonce
        conn.claimed, conn.nonce = None, ""  # one attempt per challenge
        if state is None or state.dev != dev or not nonce:
            self.core.auth_refused += 1
            return {T: wire.F_REFUSED, "error": "auth without a matching hello"}
        reply = self.core.authenticate(state, nonce, mac)
        if reply[T] == wire.F_WELCOME:
            with self.core.lock:
                old = state.conn
                if old is not None and old is not conn:  # the device reconnected
                    old.closing = True
                    try:  # NOTE: shutdown, so the stale link's EOF closes it at once
                        old.sock.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                conn.device, state.conn, conn.trusted = state, conn, True
        return reply

    # --- control ops ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        return {"role": "proxy", "streams": {
            "devices": len(core.devices), "models": sorted(core.models),
            "accepted": sum(d.accepted for d in list(core.devices.values())),
            "buffer_bytes": core.buffer.total_bytes, "frame_errors": core.frame_errors,
            "auth_refused": core.auth_refused, "server": self.stats()}}

    def ops(self) -> dict[str, Any]:
        return {wire.OP_DEVICE_REGISTER: self._op_register,
                wire.OP_STREAM_STATS: self._op_stats,
                wire.OP_MODEL_INSTALL: self._op_install, wire.OP_MODEL_REMOVE: self._op_remove,
                wire.OP_ACTUATE: self._op_actuate, wire.OP_DEVICE_RELEASE: self._op_release,
                wire.OP_DEVICE_ADOPT: self._op_adopt}

    def _op_register(self, req: dict[str, Any]) -> dict[str, Any]:
        """`{devices: [{id, type, user, role?, group?, key}], held?}`: a key is required."""
        devices, held = req.get("devices"), req.get("held", False)
        if not isinstance(devices, list) or len(devices) > self.core.max_devices:
            raise RequestError("devices must be a list of {id, type, user, role, group, key}, "
                               f"at most {self.core.max_devices}")
        if not isinstance(held, bool):
            raise RequestError("held must be true or false")
        profiles = []
        for d in devices:
            if not isinstance(d, dict):
                raise RequestError("each device must be an object")
            if not wire.is_key(d.get("key")):
                raise RequestError(f"device {str(d.get('id'))[:40]!r} needs a 'key' "
                                   "(64 lowercase hex characters)")
            profiles.append({"id": d.get("id"), "type": d.get("type"), "user": d.get("user"),
                             "role": d.get("role", "sensor"), "group": d.get("group") or "",
                             "key": d["key"]})
        return {"registered": self.core.register_many(profiles, held),
                "stream_port": self.port}

    def _op_release(self, req: dict[str, Any]) -> dict[str, Any]:
        devices = req.get("devices")
        if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
            raise RequestError("devices must be a list of device ids")
        released = self.core.release(devices)
        for _snap, conn in released:
            if conn is not None:
                # NOTE: shutdown (not close) from this thread: the stream thread sees EOF,
                # closes the socket itself and the device reconnects at once.
                try:
                    conn.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        return {"released": [snap for snap, _conn in released]}

    def _op_adopt(self, req: dict[str, Any]) -> dict[str, Any]:
        devices = req.get("devices")
        if not isinstance(devices, list) or len(devices) > self.core.max_devices:
            raise RequestError("devices must be a list of snapshots")
        return {"adopted": self.core.adopt(devices)}

    def _op_stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        return self.core.stats()

    def _op_install(self, req: dict[str, Any]) -> dict[str, Any]:
        """`{app, model, grants, params?, sink: {host, port, key}}`."""
        app, model, grants = req.get("app"), req.get("model"), req.get("grants")
        sink, params = req.get("sink"), req.get("params", {})
        if not isinstance(app, str) or not isinstance(model, str) or not app:
            raise RequestError("model_install needs 'app' and 'model'")
        if len(app) > wire.NAME_MAX:
            raise RequestError(f"an application name is at most {wire.NAME_MAX} characters")
        if not isinstance(grants, list) or not isinstance(params, dict):
            raise RequestError("grants must be a list and params an object")
        if not isinstance(sink, dict) or not isinstance(sink.get("host"), str):
            raise RequestError("sink must be {host, port, key}")
        if not wire.is_key(sink.get("key")):
            raise RequestError("sink needs a 'key' (64 lowercase hex characters)")
        try:
            allowed = check_grants(model, MODELS[model].READS, grants) if model in MODELS else None
        except PermissionDenied as exc:
            raise RequestError(f"permission denied: {exc}") from None
        if allowed is None:
            raise RequestError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        port = sink.get("port", wire.METADATA_PORT)
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise RequestError("sink port must be an integer in 1..65535")
        shipper = MetadataSink(sink["host"], port, key=sink["key"], app=app,
                               proxy=self.core.name)
        try:
            return self.core.install(app, model, [str(g) for g in grants], params, shipper)
        except (KeyError, ValueError, TypeError) as exc:
            shipper.close()
            raise RequestError(f"bad model params: {str(exc)[:200]}") from None

    def _op_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"removed": self.core.remove(str(req.get("app", "")))}

    def _op_actuate(self, req: dict[str, Any]) -> dict[str, Any]:
        dev, command = req.get("device"), req.get("command")
        with self.core.lock:
            state = self.core.devices.get(dev) if isinstance(dev, str) else None
        if state is None or state.role != "actuator":
            raise RequestError(f"{str(dev)[:40]!r} is not a registered actuator")
        if not isinstance(command, dict):
            raise RequestError("command must be an object")
        conn = state.conn  # only ever an authenticated connection
        if conn is None:
            raise RequestError(f"actuator {dev!r} is not connected")
        # NOTE: handed to the stream thread's connection buffer (under the connection's
        # lock: this runs on the control thread); sent when the socket is writable.
        if not self.push(conn, encode({T: wire.F_CMD, "cmd": command})):
            raise RequestError(f"actuator {dev!r} is not connected")
        return {"sent": True}
