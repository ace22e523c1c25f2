"""Abuse the guest agent's listeners on loopback and report what it cost (JSON on stdout).

Runs two real agents as subprocesses (`python -m edgeiot_agent`, a test key on an injected
kernel command line, every port on 127.0.0.1 and chosen by the kernel): a proxy VM's
(control + device streams) and an application VM's (control + metadata). Against each of
the three listeners it tries a bounded set of hostile inputs — malformed lines (nesting,
UTF-16/32, oversize, partial, binary, NaN, huge integers), impostors (unsigned and replayed
control ops, foreign device hellos and proofs, forged metadata), clients that never read,
floods of lines — and checks after each that a legitimate client is still answered.

Reports, per listener: inputs tried, refusals the agent counted, the slowest legitimate
answer during abuse; then crashes (restarted threads, dead agents: must be 0), each agent's
RSS before, at peak and after abuse, and the time a legitimate client takes to be served
while 1,000 idle connections are open against that listener.

Usage: python bench/abuse.py [--idle 1000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.guest.edgeiot_agent import wire  # noqa: E402

KEY = wire.new_key()
DEV_KEY = wire.new_key()
HOST = "127.0.0.1"


class GuestAgent:
    """One agent subprocess on loopback with a test key, killed by its own pid at exit."""

    def __init__(self, role: str, tmp: Path) -> None:
        cmdline = tmp / f"cmdline-{role}"
        cmdline.write_text(f"console=ttyS0 edgeiot.role={role} {wire.KEY_CMDLINE}={KEY}\n")
        env = {**os.environ, "PYTHONPATH": str(ROOT / "agent" / "guest")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgeiot_agent", "--host", HOST, "--port", "0",
             "--data-port", "0", "--name", f"px-{role}", "--cmdline-path", str(cmdline)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            preexec_fn=_raise_nofile)
        assert self.proc.stdout is not None
        ready = dict(w.split("=", 1) for w in self.proc.stdout.readline().split() if "=" in w)
        self.control = (HOST, int(ready["port"]))
        self.data = (HOST, int(ready["data_port"]))
        self.ps = psutil.Process(self.proc.pid)
        self.peak_rss = 0

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        with wire.ControlClient(*self.control, key=KEY, timeout_s=5) as client:
            return client.call(op, **args)

    def rss(self) -> int:
        value = int(self.ps.memory_info().rss)
        self.peak_rss = max(self.peak_rss, value)
        return value

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))


def malformed(max_line: int) -> list[bytes]:
    return [
        b"[" * min(max_line - 1, 60000) + b"\n", b'{"a":' * 5000 + b"}" * 5000 + b"\n",
        '{"op":"status","t":"hello","dev":"hr"}'.encode("utf-16") + b"\n",
        '{"op":"status"}'.encode("utf-32") + b"\n", b"x" * (max_line + 1) + b"\n",
        b"y" * (4 * max_line), b'{"op":"ping"', bytes(b for b in range(256) if b != 10) + b"\n",
        b'{"op":"dirty","pages_per_s":NaN,"t":"rec","seq":1,"ts":NaN}\n',
        b'{"seq":' + b"9" * 5000 + b"}\n",
        b'{"op":"dirty","pages_per_s":' + b"9" * 4000 + b',"t":"rec","seq":1,"ts":1,"v":{}}\n',
        b"\xff\xfe\xfd\n", b"[]\n", b"null\n", b"\n\r\n",
        b'{"t":"rec","seq":1,"ts":0,"v":' + b"[" * 4000 + b"]" * 4000 + b"}\n",
        b'{"t":"hello","dev":"' + b"d" * 500 + b'"}\n',
    ]


def send_and_drop(address: tuple[str, int], payload: bytes, read: bool = True) -> None:
    try:
        with socket.create_connection(address, timeout=2) as sock:
            sock.sendall(payload)
            if read and payload.strip():
                sock.recv(4096)
    except OSError:
        pass  # the agent may hang up at once: that is allowed


def legit(address: tuple[str, int], line: bytes, expect: bytes, timeout: float = 5.0) -> float:
    """Seconds until a fresh client's `line` gets a reply containing `expect` (retrying a
    refusal); raises if none within `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with socket.create_connection(address, timeout=timeout) as sock:
                sock.sendall(line)
                reply = sock.makefile("rb").readline()
            if expect in reply:
                return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"{address}: no legitimate answer within {timeout} s")


class Listener:
    """One listener under abuse: its address, its legitimate probe, its counters."""

    def __init__(self, name: str, address: tuple[str, int], probe: bytes, expect: bytes,
                 max_line: int) -> None:
        self.name, self.address, self.probe, self.expect = name, address, probe, expect
        self.max_line = max_line
        self.tried = 0
        self.slowest_legit_s = 0.0
        self.held: list[socket.socket] = []

    def check(self) -> None:
        self.slowest_legit_s = max(self.slowest_legit_s,
                                   legit(self.address, self.probe, self.expect))

    def hit(self, payload: bytes, read: bool = True) -> None:
        self.tried += 1
        send_and_drop(self.address, payload, read)

    def never_reads(self, payload: bytes) -> None:
        self.tried += 1
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(2)
        try:
            sock.connect(self.address)
            sock.sendall(payload)
        except OSError:
            pass
        self.held.append(sock)

    def release(self) -> None:
        for sock in self.held:
            sock.close()
        self.held.clear()


def abuse_control(lst: Listener, rounds: int) -> None:
    for _ in range(rounds):
        for payload in malformed(lst.max_line):
            lst.hit(payload)
        for op in (wire.OP_STATUS, wire.OP_DIRTY, wire.OP_DEVICE_REGISTER, wire.OP_MODEL_INSTALL,
                   wire.OP_DEVICE_ADOPT, "nonsense"):
            lst.hit(wire.dumps({"op": op, "pages_per_s": 10**6, "working_set_mib": 10**6}))
            with wire.ControlClient(*lst.address, key=wire.new_key(), timeout_s=2) as fake:
                lst.tried += 1
                fake.call(op)
        with wire.ControlClient(*lst.address, key=KEY, timeout_s=2) as owner:
            owner.call(wire.OP_STATUS)
            captured = wire.sign_request(KEY, owner.nonce, 1, {"op": wire.OP_STATUS})
            lst.tried += 1
            owner.exchange(captured)  # replayed on its own connection: a stale counter
        lst.hit(wire.dumps(captured))  # replayed on another connection: another nonce
        lst.never_reads(b'{"op":"challenge"}\n' * 50_000)
        lst.hit(b'{"op":"ping"}\n' * 20_000, read=False)
        lst.check()


def abuse_streams(lst: Listener, rounds: int) -> None:
    for _ in range(rounds):
        for payload in malformed(lst.max_line):
            lst.hit(payload)
        for dev in ("hr", "sw", "nobody"):
            lst.tried += 1
            try:
                with socket.create_connection(lst.address, timeout=2) as sock:
                    reader = sock.makefile("rb")
                    sock.sendall(wire.dumps({"t": "hello", "dev": dev}))
                    challenge = json.loads(reader.readline() or b"{}")
                    sock.sendall(wire.record_line(10**9, 1.0, {"bpm": 1}) + b"\n")
                    proof = wire.device_proof(wire.new_key(), dev, challenge.get("nonce", ""))
                    sock.sendall(wire.dumps({"t": "auth", "dev": dev, "mac": proof}))
                    reader.readline()
            except OSError:
                pass
        lst.never_reads(b'{"t":"ping"}\n' * 50_000)
        lst.hit(wire.record_line(1, 1.0, {"bpm": 1}) * 2000 + b"\n", read=False)
        lst.check()


def abuse_metadata(lst: Listener, rounds: int) -> None:
    spot = {"spot": "s", "lat": 1.0, "lon": 1.0, "free": True, "ts": 1.0}
    for _ in range(rounds):
        for payload in malformed(lst.max_line):
            lst.hit(payload)
        lst.hit(wire.meta_line(1, spot))  # no handshake at all
        lst.hit(wire.dumps({"app": "park", "src": "px", "m": spot}))  # yesterday's format
        for proxy in ("px", "evil"):
            lst.tried += 1
            try:
                with socket.create_connection(lst.address, timeout=2) as sock:
                    reader = sock.makefile("rb")
                    sock.sendall(wire.dumps({"t": "hello", "app": "park", "proxy": proxy,
                                             "epoch": "e"}))
                    nonce = json.loads(reader.readline() or b"{}").get("nonce", "")
                    forged = wire.sink_proof(wire.new_key(), "park", proxy, nonce)
                    sock.sendall(wire.dumps({"t": "auth", "mac": forged}))
                    reader.readline()
            except OSError:
                pass
        lst.never_reads(wire.dumps({"t": "hello", "app": "park", "proxy": "p",
                                    "epoch": "e"}) * 5000)
        lst.check()


def idle_flood(lst: Listener, count: int, server_stats: Any) -> dict[str, Any]:
    """Open `count` idle connections, then time a legitimate client; `server_stats()` is
    the listener's own counters (how many it turned away, how many idle strangers it
    evicted to make room)."""
    before = server_stats()
    socks, failed = [], 0
    for _ in range(count):
        try:
            socks.append(socket.create_connection(lst.address, timeout=2))
        except OSError:
            failed += 1
    try:
        time.sleep(1.2)  # idle strangers become evictable after 1 s
        served_s = legit(lst.address, lst.probe, lst.expect)
        again_s = legit(lst.address, lst.probe, lst.expect)
    finally:
        for sock in socks:
            sock.close()
    after = server_stats()
    turned_away = after["refused_conns"] - before["refused_conns"]
    evicted = after["evicted"] - before["evicted"]
    return {"idle_opened": len(socks), "connect_failed": failed,
            "held_by_server_at_end": len(socks) - turned_away - evicted,
            "turned_away": turned_away, "evicted": evicted,
            "legit_served_s": round(served_s, 4), "legit_again_s": round(again_s, 4)}


def legit_stream(proxy: GuestAgent, records: int) -> dict[str, Any]:
    """A real device stream through the proxy while nothing else happens: exactly once."""
    from agent.devices.emulator import Device

    device = Device("hr", lambda: proxy.data, key=DEV_KEY)
    device.start()
    try:
        for i in range(records):
            device.emit(1.7e9 + i, {"bpm": 70})
        deadline = time.monotonic() + 20
        while device.acked < records and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        device.stop()
    state = proxy.call(wire.OP_STREAM_STATS)["devices"]["hr"]
    return {"sent": records, "acked": device.acked, "accepted": state["accepted"],
            "chain_equal": state["chain"] == device.chain}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    _raise_nofile()
    tmp = Path(tempfile.mkdtemp(prefix="edgeiot-abuse-"))
    proxy, app = GuestAgent("proxy", tmp), GuestAgent("app", tmp)
    try:
        app.call(wire.OP_APP_CONFIGURE, app="park", kind="parknet")
        before = {"proxy": proxy.rss(), "app": app.rss()}
        listeners = {
            "control": Listener("control", proxy.control, b'{"op":"ping"}\n', b'"pong"',
                                wire.MAX_CONTROL_LINE),
            "streams": Listener("streams", proxy.data, b'{"t":"hello","dev":"hr"}\n',
                                b"challenge", wire.MAX_FRAME_BYTES),
            "metadata": Listener("metadata", app.data,
                                 wire.dumps({"t": "hello", "app": "park", "proxy": "px",
                                             "epoch": "e"}), b"challenge", wire.MAX_META_LINE)}
        proxy.call(wire.OP_DEVICE_REGISTER, devices=[
            {"id": "hr", "type": "heart-rate", "user": "u", "key": DEV_KEY}])
        sampler_stop = threading.Event()

        def sample() -> None:
            while not sampler_stop.wait(0.1):
                proxy.rss()
                app.rss()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.monotonic()
        abuse_control(listeners["control"], args.rounds)
        abuse_streams(listeners["streams"], args.rounds)
        abuse_metadata(listeners["metadata"], args.rounds)
        abuse_s = time.monotonic() - started
        for lst in listeners.values():
            lst.release()
        stats_of = {
            "control": lambda: proxy.call(wire.OP_STATUS)["control"],
            "streams": lambda: proxy.call(wire.OP_STATUS)["streams"]["server"],
            "metadata": lambda: app.call(wire.OP_STATUS)["server"]}
        flood = {name: idle_flood(lst, args.idle, stats_of[name])
                 for name, lst in listeners.items()}
        sampler_stop.set()
        sampler.join()
        stream = legit_stream(proxy, 2000)
        time.sleep(0.5)
        after = {"proxy": proxy.rss(), "app": app.rss()}
        pstatus, astatus = proxy.call(wire.OP_STATUS), app.call(wire.OP_STATUS)
        alive = proxy.proc.poll() is None and app.proc.poll() is None
        report: dict[str, Any] = {
            "listeners": {name: {"inputs_tried": lst.tried,
                                 "slowest_legit_s": round(lst.slowest_legit_s, 4)}
                          for name, lst in listeners.items()},
            "refusals_counted": {
                "control_auth_refused": pstatus["auth_refused"] + astatus["auth_refused"],
                "control": pstatus["control"], "streams": pstatus["streams"],
                "metadata": astatus["metadata"], "metadata_server": astatus["server"]},
            "crashes": {"restarts": pstatus["restarts_total"] + astatus["restarts_total"],
                        "agents_alive": alive},
            "rss_mib": {role: {"before": round(before[role] / 2**20, 1),
                               "peak": round(agent.peak_rss / 2**20, 1),
                               "after": round(after[role] / 2**20, 1),
                               "growth": round((after[role] - before[role]) / 2**20, 1)}
                        for role, agent in (("proxy", proxy), ("app", app))},
            "idle_flood": {"connections": args.idle, **flood},
            "legit_stream_after_abuse": stream,
            "abuse_s": round(abuse_s, 2),
        }
    finally:
        proxy.stop()
        app.stop()
    print(json.dumps(report, indent=2))
    ok = report["crashes"]["restarts"] == 0 and alive and stream["accepted"] == stream["sent"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
