"""The replay's real devices: per user a device at home and a car that roams with the trace.

Why beside the bulk stream: the scenario's bulk UDP stream makes r_data high enough to
measure core bytes, but it has no records that could be lost or doubled. Issue 3's device
emulators (`agent.devices`: acked TCP, sequence numbers, hash chains) do, so every
migration, decomposition and composition the replay performs is also checked for
"every record accepted exactly once".

Per user (trace user `u0` …):

* a home device (a heart-rate monitor, mobility static) that stays behind the fog node of
  the user's first BS — unless the user is *roaming* (then everything roams together and
  Eq. 1 decides whole migrations);
* a car (GPS + speedometer, one group) whose radios follow the trace: when the user roams,
  the world rewrites the emulator's attachments file and the car's device threads move into
  the new fog node's network namespace and reconnect from there (to whichever proxy the
  directory names). The car's GPS also stands for the bulk stream in Eq. 1 (its rate is
  r_data): the bulk stream is the car's raw data.

Location updates: the first one comes from the home device (or the GPS) as cluster head
for all of the user's devices; roams come from the GPS for the car.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.edge.devices import DeviceRegistry, launch_emulator, with_keys
from orchestrator.edge.proxies import ProxyService, directory_path
from orchestrator.edge.users import proxy_name
from orchestrator.errors import OrchestratorError, UserError
from orchestrator.fog.session import FleetSession
from orchestrator.model.mme import LocationUpdate
from orchestrator.store import Store

EPC = "urn:epc:id:giai:0614141"
RECORD_BYTES = 90  # a record line, roughly: what a low-rate device adds to Eq. 1's r_data


@dataclass(frozen=True)
class UserDevices:
    user: str
    home: str | None  # stays behind the user's first BS; None: a roaming user
    gps: str
    speed: str

    @property
    def mobile(self) -> tuple[str, ...]:
        """The car: roams with the trace (the GPS reports for both)."""
        return (self.gps, self.speed)

    @property
    def all(self) -> tuple[str, ...]:
        return ((self.home,) if self.home else ()) + self.mobile


# ----------------------------------------------------------------------------- pure parts


def plan_devices(users: Iterable[str], roaming: Iterable[str] = ()) -> dict[str, UserDevices]:
    """Device IDs (EPC URNs, globally unique per user name) for each user."""
    away = set(roaming)
    return {u: UserDevices(u, None if u in away else f"{EPC}.{u}.home", f"{EPC}.{u}.gps",
                           f"{EPC}.{u}.speed") for u in users}


def registrations(devs: UserDevices) -> list[dict[str, Any]]:
    """What the registry records for a user's devices (the car as one group)."""
    car = {"user": devs.user, "mobility": "mobile", "role": "sensor", "grp": f"car-{devs.user}"}
    out: list[dict[str, Any]] = [{"id": devs.gps, "type": "gps", **car},
                                 {"id": devs.speed, "type": "speed", **car}]
    if devs.home:
        out.insert(0, {"id": devs.home, "user": devs.user, "type": "heart-rate",
                       "mobility": "static", "role": "sensor", "grp": None})
    return out


def device_rates(devs: UserDevices, r_data_bps: float, hz: float) -> dict[str, float]:
    """Eq. 1's per-device rates: the GPS carries the bulk stream, the others their records."""
    small = hz * RECORD_BYTES
    return {d: (r_data_bps + small if d == devs.gps else small) for d in devs.all}


def first_update(devs: UserDevices, bs: str, at_s: float) -> LocationUpdate:
    """Minute 0: every device of the user is seen at its first BS."""
    head, *members = devs.all
    return LocationUpdate(head, bs, at_s, tuple(members))


def roam_update(devs: UserDevices, bs: str, at_s: float) -> LocationUpdate:
    """A roam: the GPS reports for the car."""
    return LocationUpdate(devs.gps, bs, at_s, (devs.speed,))


def attachments(devs: UserDevices, home_netns: str, car_netns: str) -> dict[str, str]:
    """Behind which node's namespace each radio is: home at home, the car where it is."""
    out = dict.fromkeys(devs.mobile, car_netns)
    if devs.home:
        out[devs.home] = home_netns
    return out


def emulator_spec(devs: UserDevices, hz: float, directory: Path, subnet: str, bridge: str,
                  report: Path, radios: Path, drain_s: float = 60.0) -> dict[str, Any]:
    """The emulator's spec: the car drives a small route; the home device beats."""
    sources: list[dict[str, Any]] = [
        {"kind": "drive", "gps": devs.gps, "speed": devs.speed, "seed": 7, "dwell": 20,
         "route": [[4010, -7400], [4010, -7399], [4011, -7399]]}]
    if devs.home:
        sources.insert(0, {"kind": "heart", "device": devs.home})
    return {"user": devs.user, "rate": hz, "ticks": 10_000_000, "drain_s": drain_s,
            "directory": str(directory), "lab_subnet": subnet, "bridge": bridge,
            "report": str(report), "attachments": str(radios), "sources": sources}


def exactly_once(sent: Mapping[str, Any] | None, got: Mapping[str, Any] | None) -> dict[str, Any]:
    """One device's figures at the end: what the emulator sent and saw acknowledged, what
    the proxy serving it accepted; `exactly_once` iff every record sent was acknowledged
    and accepted once, in order (next = sent + 1, equal hash chains, nothing invalid)."""
    s, g = dict(sent or {}), dict(got or {})
    out = {"sent": s.get("sent"), "acked": s.get("acked"), "accepted": g.get("accepted"),
           "next": g.get("next"), "invalid": g.get("invalid"),
           "duplicates": g.get("duplicates"), "chain_equal": bool(s) and bool(g)
           and s.get("chain") == g.get("chain"), "proxy": g.get("proxy"),
           "served_by": s.get("served_by", []), "connects": s.get("connects"),
           "max_gap_s": s.get("max_gap_s")}
    out["exactly_once"] = (bool(s) and bool(g) and (s.get("sent") or 0) > 0
                           and s["sent"] == s.get("acked") == g.get("accepted")
                           and g.get("next") == s["sent"] + 1 and out["chain_equal"]
                           and g.get("invalid") == 0 and not g.get("away"))
    return out


# ----------------------------------------------------------------------------- the world


@dataclass
class DeviceWorld:
    """Registers the users and devices, runs one emulator per user in the namespace of the
    user's first node, moves the car's radios as the trace says, and at the end stops the
    emulators (they drain what is unacknowledged) and compares with what the proxies hold."""

    session: FleetSession
    store: Store
    state_dir: Path
    plan: dict[str, UserDevices]
    netns: Callable[[str], str]  # node → network namespace path
    enter: Callable[[str], list[str]]  # node → argv prefix that runs inside it
    subnet: str
    bridge: str
    hz: float
    workdir: Path
    homes: dict[str, str] = field(default_factory=dict)  # user → home node
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def register(self) -> None:
        """Users and devices in the records (kept from an earlier policy or run)."""
        registry = DeviceRegistry(self.store)
        known = {d["id"]: d["user"] for d in self.store.devices()}
        for user, devs in self.plan.items():
            if self.store.user(user) is None:
                self.store.add_user(user, proxy_name(user))
            else:
                self.store.set_user_proxy(user, proxy_name(user))
            for dev in registrations(devs):
                if known.get(dev["id"], user) != user:
                    raise UserError(f"device {dev['id']} belongs to {known[dev['id']]}")
                if dev["id"] not in known:
                    registry.add(dev["id"], user, dev["type"], dev["mobility"], dev["role"],
                                 group=dev["grp"])

    def start(self, homes: Mapping[str, str], timeout_s: float = 60.0) -> None:
        """Tell the proxies their devices, write the directory, start the emulators and
        wait until every device had a record acknowledged."""
        self.homes = dict(homes)
        proxies = ProxyService(self.session, self.store, self.state_dir)
        for user in self.plan:
            proxies.push_devices(proxy_name(user))
        proxies.write_directory()
        self.workdir.mkdir(parents=True, exist_ok=True)
        for user, devs in self.plan.items():
            node = self.homes[user]
            self._attach(user, node)
            spec = with_keys(emulator_spec(devs, self.hz, directory_path(self.state_dir),
                                           self.subnet, self.bridge,
                                           self._path(user, "report.json"),
                                           self._path(user, "radios.json")), self.store)
            self.procs[user] = launch_emulator(self.enter(node), spec,
                                               self._path(user, "spec.json"),
                                               self._path(user, "emulator.log"))
        self._wait_streaming(timeout_s)

    def roam(self, user: str, node: str) -> None:
        """The car's radios are now behind `node` (the home device stays)."""
        self._attach(user, node)

    def finish(self, timeout_s: float = 90.0) -> dict[str, dict[str, dict[str, Any]]]:
        """Stop the emulators (each drains, then writes its final report) and compare each
        device's report with the stats of the proxy serving it: user → device → figures."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        proxies = ProxyService(self.session, self.store, self.state_dir)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for user, devs in self.plan.items():
            report, error = self._report(user), None
            try:
                stats = proxies.stats(user)["devices"]
            except OrchestratorError as exc:
                stats, error = {}, str(exc)
            done = report.get("status") == "done"
            out[user] = {}
            for dev in devs.all:
                sent = report.get("devices", {}).get(dev) if done else None
                out[user][dev] = exactly_once(sent, stats.get(dev))
                if error:
                    out[user][dev]["error"] = error
        return out

    def stop(self) -> None:
        """Emulators still running (a failed replay) are ended without waiting for a drain."""
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()

    def _attach(self, user: str, node: str) -> None:
        devs = self.plan[user]
        path = self._path(user, "radios.json")
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(attachments(devs, self.netns(self.homes[user]),
                                              self.netns(node))))
        tmp.replace(path)  # the emulator notices the new inode

    def _path(self, user: str, name: str) -> Path:
        return self.workdir / f"{user}-{name}"

    def _report(self, user: str) -> dict[str, Any]:
        try:
            return dict(json.loads(self._path(user, "report.json").read_text()))
        except (OSError, ValueError):
            return {}

    def _wait_streaming(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            reports = {u: self._report(u).get("devices", {}) for u in self.plan}
            if all(reports[u].get(d, {}).get("acked", 0) > 0
                   for u, devs in self.plan.items() for d in devs.all):
                return
            dead = [u for u, p in self.procs.items() if p.poll() is not None]
            if dead:
                raise OrchestratorError(f"device emulators of {', '.join(dead)} exited; see "
                                        f"{self._path(dead[0], 'emulator.log')}")
            time.sleep(0.3)
        raise OrchestratorError(f"devices not streaming after {timeout_s:.0f} s; see "
                                f"{self.workdir}")
