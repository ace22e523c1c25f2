"""The proxy VM's data plane: device streams in, metadata out.

Why this shape: devices connect over TCP (port 7071), say `hello` with their ID, and send
records with per-device sequence numbers. The proxy accepts a record only if its seq is the
next one expected for that device, acknowledges cumulatively, and tells a reconnecting
device which seq it expects next — so a device that resends everything unacknowledged after
a reconnect (e.g. across a live migration's downtime) delivers every record exactly once.
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
device asks the directory again at once.
"""

from __future__ import annotations

import hashlib
import socket
import threading

from .buffer import RawBuffer
from .classify import DATA_TYPES, ClassifyError, classify
from .codec import MAX_FRAME_BYTES, FrameError, LineSplitter, decode_frame, encode
from .control import RequestError
from .handover import COUNTERS, SnapshotError, parse_snapshot
from .lineserver import Conn, LineServer
from .metadata import APP_PORT, MetadataSink, SchemaError, check, envelope
from .models import MODELS, Record
from .permissions import Gate, PermissionDenied, check_grants

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

STREAM_PORT = 7071
MAX_CONNECTIONS = 256
ROLES = ("sensor", "actuator")


class DeviceState:
    """What the proxy knows of one device: its profile and its stream's progress."""

    def __init__(self, dev: str, dtype: str, user: str, role: str, group: str = "",
                 away: bool = False) -> None:
        self.dev, self.dtype, self.user, self.role = dev, dtype, user, role
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
    """A device's connection; its lines are split by the frame codec's `LineSplitter`."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock, LineSplitter())
        self.device: DeviceState | None = None


class ProxyCore:
    """Ingest logic without sockets: registration, exactly-once, classify, buffer, models."""

    def __init__(self, name: str, buffer: RawBuffer | None = None) -> None:
        self.name = name
        self.buffer = buffer or RawBuffer()
        self.devices: dict[str, DeviceState] = {}
        self.models: dict[str, Installed] = {}
        self.frame_errors = 0
        self.lock = threading.RLock()

    # --- registration and models -------------------------------------------------------

    def register(self, dev: str, dtype: str, user: str, role: str = "sensor",
                 group: str = "", held: bool = False) -> None:
        """Know a device's profile; `held`: a new device waits for its state (handover)."""
        if dtype not in DATA_TYPES:
            raise RequestError(f"unknown data type {dtype!r}")
        if role not in ROLES:
            raise RequestError(f"unknown device role {role!r}")
        if not dev or not user:
            raise RequestError("a device needs an id and a user")
        with self.lock:
            known = self.devices.get(dev)
            if known is not None and (known.dtype, known.user) != (dtype, user):
                raise RequestError(f"device {dev!r} is registered with another profile")
            if known is None:
                self.devices[dev] = DeviceState(dev, dtype, user, role, group, away=held)

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
        with self.lock:
            state = self.devices.get(dev)
        if state is None:
            return None, {"t": "refused", "error": f"unknown device {dev!r}"}
        if state.away:
            return None, moved(dev)
        return state, {"t": "welcome", "dev": dev, "next": state.next, "proxy": self.name}

    def record(self, state: DeviceState, frame: dict[str, Any], line: bytes) -> dict[str, Any]:
        """Accept the next record exactly once; the reply is the cumulative ack (or error)."""
        with self.lock:
            if state.away:  # released while this connection was still open
                return moved(state.dev)
            seq = frame["seq"]
            if seq < state.next:
                state.duplicates += 1
                return {"t": "ack", "seq": state.next - 1}
            if seq > state.next:
                return {"t": "ack", "seq": state.next - 1, "gap": seq}
            try:
                value = classify(state.dtype, frame["v"])
            except ClassifyError as exc:
                state.invalid += 1
                state.next += 1  # refused for good: resending would not fix it
                return {"t": "error", "seq": seq, "error": str(exc)}
            state.next += 1
            state.accepted += 1
            state.raw_bytes += len(line)
            state.chain = hashlib.sha256((state.chain + line.decode()).encode()).hexdigest()[:32]
            self.buffer.append(line)
            record = Record(state.dev, state.user, state.dtype, seq, frame["ts"], value,
                            state.group)
            self._run_models(record, len(line))
            return {"t": "ack", "seq": seq}

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
                    line = envelope(inst.app, self.name, check(meta, inst.model.SCHEMA))
                except SchemaError:
                    inst.schema_errors += 1
                    continue
                inst.emitted += 1
                inst.meta_bytes += len(line)
                inst.sink.send(line)

    def stats(self) -> dict[str, Any]:
        with self.lock:
            return {"devices": {d: s.stats() for d, s in self.devices.items()},
                    "models": {a: m.stats() for a, m in self.models.items()},
                    "buffer": self.buffer.status(), "frame_errors": self.frame_errors}


def moved(dev: str) -> dict[str, Any]:
    return {"t": "moved", "dev": dev,
            "error": f"device {dev!r} is not served by this proxy: ask the directory again"}


class StreamService(LineServer):
    """The proxy role's service: the stream listener plus its control ops."""

    name = "streams"
    thread_name = "streams"
    max_line = MAX_FRAME_BYTES
    max_conns = MAX_CONNECTIONS

    def __init__(self, name: str, host: str = "0.0.0.0", port: int = STREAM_PORT,
                 buffer_bytes: int = 4 * 1024 * 1024) -> None:
        super().__init__(host, port)
        self.core = ProxyCore(name, RawBuffer(buffer_bytes))

    def stop(self) -> None:
        super().stop()
        for inst in list(self.core.models.values()):
            inst.sink.close()

    def new_conn(self, sock: socket.socket) -> _Conn:
        return _Conn(sock)

    def conn_closed(self, conn: _Conn) -> None:  # type: ignore[override]
        if conn.device is not None and conn.device.conn is conn:
            conn.device.conn = None

    def handle_lines(self, conn: _Conn, lines: list[bytes | None]) -> bytes:  # type: ignore[override]
        out, last_ack, end = b"", None, b""
        for line in lines:
            reply = self._frame(conn, line)
            if reply is None:
                continue
            if reply["t"] == "ack":
                last_ack = reply  # cumulative: one ack per read is enough
                continue
            if reply["t"] == "moved":  # the last word on this connection
                conn.closing, end = True, encode(reply)
                break
            out += encode(reply)
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
            return {"t": "error", "error": str(exc)}
        if frame["t"] == "hello":
            state, reply = self.core.hello(frame["dev"])
            if state is not None:
                if state.conn is not None and state.conn is not conn:
                    state.conn.closing = True  # the device reconnected; the old link is stale
                conn.device, state.conn = state, conn
            return reply
        if conn.device is None:
            self.core.frame_errors += 1
            return {"t": "error", "error": "send hello first"}
        return self.core.record(conn.device, frame, line)  # type: ignore[arg-type]

    # --- control ops ---------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        core = self.core
        return {"role": "proxy", "streams": {
            "devices": len(core.devices), "models": sorted(core.models),
            "accepted": sum(d.accepted for d in core.devices.values()),
            "buffer_bytes": core.buffer.total_bytes, "frame_errors": core.frame_errors}}

    def ops(self) -> dict[str, Any]:
        return {"device_register": self._op_register, "stream_stats": self._op_stats,
                "model_install": self._op_install, "model_remove": self._op_remove,
                "actuate": self._op_actuate, "device_release": self._op_release,
                "device_adopt": self._op_adopt}

    def _op_register(self, req: dict[str, Any]) -> dict[str, Any]:
        devices, held = req.get("devices"), req.get("held", False)
        if not isinstance(devices, list):
            raise RequestError("devices must be a list of {id, type, user, role, group}")
        if not isinstance(held, bool):
            raise RequestError("held must be true or false")
        for d in devices:
            if not isinstance(d, dict):
                raise RequestError("each device must be an object")
            self.core.register(str(d.get("id", "")), str(d.get("type", "")),
                               str(d.get("user", "")), str(d.get("role", "sensor")),
                               str(d.get("group") or ""), held)
        return {"registered": len(devices), "stream_port": self.port}

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
        if not isinstance(devices, list):
            raise RequestError("devices must be a list of snapshots")
        return {"adopted": self.core.adopt(devices)}

    def _op_stats(self, _req: dict[str, Any]) -> dict[str, Any]:
        return self.core.stats()

    def _op_install(self, req: dict[str, Any]) -> dict[str, Any]:
        app, model, grants = req.get("app"), req.get("model"), req.get("grants")
        sink, params = req.get("sink"), req.get("params", {})
        if not isinstance(app, str) or not isinstance(model, str) or not app:
            raise RequestError("model_install needs 'app' and 'model'")
        if not isinstance(grants, list) or not isinstance(params, dict):
            raise RequestError("grants must be a list and params an object")
        if not isinstance(sink, dict) or not isinstance(sink.get("host"), str):
            raise RequestError("sink must be {host, port}")
        try:
            allowed = check_grants(model, MODELS[model].READS, grants) if model in MODELS else None
        except PermissionDenied as exc:
            raise RequestError(f"permission denied: {exc}") from None
        if allowed is None:
            raise RequestError(f"unknown model {model!r}; known: {', '.join(sorted(MODELS))}")
        try:
            port = int(sink.get("port", APP_PORT))
        except (TypeError, ValueError):
            raise RequestError("sink port must be an integer") from None
        shipper = MetadataSink(sink["host"], port)
        try:
            return self.core.install(app, model, [str(g) for g in grants], params, shipper)
        except (KeyError, ValueError, TypeError) as exc:
            shipper.close()
            raise RequestError(f"bad model params: {exc}") from None

    def _op_remove(self, req: dict[str, Any]) -> dict[str, Any]:
        return {"removed": self.core.remove(str(req.get("app", "")))}

    def _op_actuate(self, req: dict[str, Any]) -> dict[str, Any]:
        dev, command = req.get("device"), req.get("command")
        with self.core.lock:
            state = self.core.devices.get(str(dev))
        if state is None or state.role != "actuator":
            raise RequestError(f"{dev!r} is not a registered actuator")
        if not isinstance(command, dict):
            raise RequestError("command must be an object")
        conn = state.conn
        if conn is None:
            raise RequestError(f"actuator {dev!r} is not connected")
        # NOTE: handed to the stream thread's connection buffer (under the connection's
        # lock: this runs on the control thread); sent when the socket is writable.
        if not self.push(conn, encode({"t": "cmd", "cmd": command})):
            raise RequestError(f"actuator {dev!r} is not connected")
        return {"sent": True}
