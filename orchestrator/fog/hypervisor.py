"""The only module that talks to libvirt: one connection per fog node, one method per call.

`Hypervisor` wraps a virConnect, `Guest` a virDomain. libvirt errors become
`OrchestratorError`s with libvirt's own message; "no such domain" becomes `None` where a
lookup may legitimately miss. Connections are opened only after `netguard` has checked the
route to the node.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import libvirt
import libvirt_qemu

from orchestrator.errors import OrchestratorError, UnsafeDestination
from orchestrator.fog.capabilities import (
    PAGE_SAMPLING,
    QUERY_DIRTY_RATE,
    Capabilities,
    DirtyRate,
    calc_dirty_rate_command,
    detect,
    parse_dirty_rate,
    parse_query_dirty_rate,
)
from orchestrator.fog.node import FogNode
from orchestrator.netguard import NetworkPolicy, check_destination, pinned_uri


def _quiet(_ctx: object, _err: object) -> None:
    """libvirt prints every error to stderr by default; we report them ourselves."""


libvirt.registerErrorHandler(_quiet, None)

STATE_NAMES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}


_event_loop_lock = threading.Lock()
_event_loop_started = False


def _ensure_event_loop() -> None:
    """Run libvirt's default event loop in a daemon thread, once per process.

    NOTE: client-side keepalive only works with an event loop; without it a call to a node
    whose link died blocks until TCP gives up (many minutes). Must run before the first
    connection is opened.
    """
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def loop() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=loop, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


def _error(what: str, exc: libvirt.libvirtError) -> OrchestratorError:
    return OrchestratorError(f"{what}: {exc.get_error_message()}")


class _QmpRefused(Exception):
    """QEMU answered a monitor command with an error object."""


@dataclass
class Guest:
    """One domain on one node."""

    dom: libvirt.virDomain
    node: str

    @property
    def name(self) -> str:
        return str(self.dom.name())

    def state(self) -> str:
        try:
            state, _reason = self.dom.state()
        except libvirt.libvirtError as exc:
            raise _error(f"state of {self.name} on {self.node}", exc) from exc
        return STATE_NAMES.get(state, str(state))

    def is_running(self) -> bool:
        """Running as a VM should: not paused (an incoming migration's destination domain is
        active but paused until the switch-over), not shut off."""
        try:
            return self.state() == "running"
        except OrchestratorError:
            return False

    def is_active(self) -> bool:
        try:
            return bool(self.dom.isActive())
        except libvirt.libvirtError:
            return False

    def memory_bytes(self) -> int:
        return int(self.dom.maxMemory()) * 1024

    def xml(self) -> str:
        return str(self.dom.XMLDesc(0))

    def job_stats(self, completed: bool = False) -> dict[str, Any]:
        flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
        try:
            return dict(self.dom.jobStats(flags))
        except libvirt.libvirtError as exc:
            raise _error(f"job stats of {self.name} on {self.node}", exc) from exc

    def migrate(self, dest_uri: str, params: dict[str, Any], flags: int) -> None:
        """Blocking peer-to-peer migration; returns when the job has ended."""
        try:
            self.dom.migrateToURI3(dest_uri, params, flags)
        except libvirt.libvirtError as exc:
            raise _error(f"migration of {self.name} from {self.node}", exc) from exc

    def set_max_downtime(self, downtime_ms: int) -> None:
        try:
            self.dom.migrateSetMaxDowntime(downtime_ms, 0)
        except libvirt.libvirtError as exc:
            raise _error(f"set max downtime of {self.name}", exc) from exc

    def abort_job(self) -> None:
        try:
            self.dom.abortJob()
        except libvirt.libvirtError as exc:
            raise _error(f"abort job of {self.name}", exc) from exc

    def start_postcopy(self) -> None:
        try:
            self.dom.migrateStartPostCopy(0)
        except libvirt.libvirtError as exc:
            raise _error(f"switch {self.name} to post-copy", exc) from exc

    def measure_dirty_rate(self, caps: Capabilities, window_s: int = 1,
                           mode: str = PAGE_SAMPLING, sleep: Callable[[float], None] = time.sleep,
                           poll_s: float = 0.2, more_samples: bool = False) -> DirtyRate:
        """The hypervisor's dirty-rate calculation over `window_s` whole seconds.

        Refused (one line, before QEMU is asked) where `caps` says the mode cannot work:
        dirty-bitmap under TCG killed QEMU 7.2's guest, dirty-ring needs KVM. With
        `more_samples`, page sampling asks QEMU itself for 8× libvirt's samples (see
        fog.capabilities), falling back to libvirt's call if QEMU's monitor refuses.
        NOTE: off by default: the first campaign with it (QEMU 7.2, TCG, pti=on) lost its
        guest to a kernel oops (rb_erase NULL dereference) right after an idle 20 MiB/s
        migration, where 20 points with libvirt's call had none. One run does not prove the
        cause; until a run on QEMU ≥ 9.0 or a memory comparison clears it, libvirt's call
        (512 pages per GiB) is what `migrate` uses.
        """
        refusal = caps.dirty_rate_refusal(mode)
        if refusal:
            raise OrchestratorError(f"dirty rate of {self.name}: {refusal}")
        if mode == PAGE_SAMPLING and more_samples:
            try:
                return self._sampled_dirty_rate(window_s, sleep, poll_s)
            except (libvirt.libvirtError, _QmpRefused):
                pass  # e.g. a QEMU without sample-pages: libvirt's own call below
        flags = {PAGE_SAMPLING: libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING,
                 "dirty-ring": libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_RING,
                 "dirty-bitmap": libvirt.VIR_DOMAIN_DIRTYRATE_MODE_DIRTY_BITMAP}[mode]
        try:
            self.dom.startDirtyRateCalc(window_s, flags)
            sleep(window_s)
            for _ in range(int((window_s + 10) / poll_s)):
                stats = self.dom.connect().domainListGetStats(
                    [self.dom], libvirt.VIR_DOMAIN_STATS_DIRTYRATE, 0)
                measured = parse_dirty_rate(dict(stats[0][1])) if stats else None
                if measured is not None:
                    return measured
                sleep(poll_s)
        except libvirt.libvirtError as exc:
            raise _error(f"dirty rate of {self.name} on {self.node}", exc) from exc
        raise OrchestratorError(f"dirty rate of {self.name} on {self.node}: no result "
                                f"{window_s + 10} s after a {window_s} s calculation")

    def _sampled_dirty_rate(self, window_s: int, sleep: Callable[[float], None],
                            poll_s: float) -> DirtyRate:
        reply = self._qmp(calc_dirty_rate_command(window_s))
        if '"error"' in reply:
            raise _QmpRefused(reply)
        sleep(window_s)
        for _ in range(int((window_s + 10) / poll_s)):
            measured = parse_query_dirty_rate(self._qmp(QUERY_DIRTY_RATE))
            if measured is not None:
                return measured
            sleep(poll_s)
        raise OrchestratorError(f"dirty rate of {self.name} on {self.node}: no result "
                                f"{window_s + 10} s after a {window_s} s calculation")

    def _qmp(self, command: str) -> str:
        """One QMP command through libvirt (NOTE: libvirt marks the domain tainted
        "custom-monitor" in its log; nothing else changes)."""
        return str(libvirt_qemu.qemuMonitorCommand(self.dom, command, 0))

    def destroy(self) -> None:
        try:
            if self.dom.isActive():
                self.dom.destroy()
        except libvirt.libvirtError as exc:
            # NOTE: libvirt may remove a failed migration's incoming domain itself while we
            # clean up; gone is what we wanted.
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise _error(f"destroy {self.name} on {self.node}", exc) from exc

    def remove(self) -> None:
        """Stop the domain if it runs and forget its definition: gone from this node."""
        self.destroy()
        self.undefine()

    def undefine(self) -> None:
        try:
            if self.dom.isPersistent():
                self.dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise _error(f"undefine {self.name} on {self.node}", exc) from exc


DEFAULT_PORTS = {"qemu+tcp": 16509, "qemu+tls": 16514}
CONNECT_TIMEOUT_S = 3.0


def _probe_listener(node: FogNode, address: str) -> None:
    """Fail fast when nobody answers: libvirt has no connect timeout, and a SYN to a node
    whose link is gone is retried for about two minutes."""
    parsed = urlparse(node.uri)
    port = parsed.port or DEFAULT_PORTS.get(parsed.scheme)
    if port is None:
        return  # e.g. qemu+ssh: ssh has its own timeouts
    try:
        socket.create_connection((address, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise OrchestratorError(f"cannot connect to fog node {node.name} ({node.uri}): "
                                f"no answer on {address}:{port} ({exc})") from exc


class Hypervisor:
    """libvirt connection to one fog node."""

    def __init__(self, node: FogNode, conn: libvirt.virConnect, uri: str | None = None) -> None:
        self.node = node
        self.conn = conn
        self.uri = uri or node.uri  # as connected: the checked address, not a name, if pinned

    @classmethod
    def open(cls, node: FogNode, policy: NetworkPolicy) -> Hypervisor:
        """Connect to the node's libvirtd at the address netguard checked: libvirt is given
        that address (`pinned_uri`), so it never resolves a name again after the check
        (a name stays only where TLS or SSH verify the peer by it)."""
        uri = node.uri
        if node.host:
            address = check_destination(node.host, policy)
            _probe_listener(node, address)
            uri = pinned_uri(node.uri, address)
        _ensure_event_loop()
        try:
            conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise _error(f"cannot connect to fog node {node.name} ({node.uri})", exc) from exc
        if "+" in node.uri.split(":", 1)[0]:
            # NOTE: remote connections only; keepalive makes a vanished node fail calls
            # within ~10 s instead of hanging on TCP.
            try:
                conn.setKeepAlive(3, 3)
            except libvirt.libvirtError:
                pass
        return cls(node, conn, uri)

    def close(self) -> None:
        try:
            self.conn.close()
        except libvirt.libvirtError:
            pass

    def is_alive(self) -> bool:
        try:
            return bool(self.conn.isAlive())
        except libvirt.libvirtError:
            return False

    def lookup(self, name: str) -> Guest | None:
        try:
            return Guest(self.conn.lookupByName(name), self.node.name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise _error(f"look up {name} on {self.node.name}", exc) from exc

    def guests(self) -> list[Guest]:
        try:
            return [Guest(d, self.node.name) for d in self.conn.listAllDomains(0)]
        except libvirt.libvirtError as exc:
            raise _error(f"list domains on {self.node.name}", exc) from exc

    def define_and_start(self, xml: str) -> Guest:
        """Define a persistent domain and start it; undefine again if the start fails."""
        try:
            dom = self.conn.defineXML(xml)
        except libvirt.libvirtError as exc:
            raise _error(f"define domain on {self.node.name}", exc) from exc
        try:
            dom.create()
        except libvirt.libvirtError as exc:
            dom.undefine()
            raise _error(f"start {dom.name()} on {self.node.name}", exc) from exc
        return Guest(dom, self.node.name)

    def start_transient(self, xml: str) -> Guest:
        try:
            return Guest(self.conn.createXML(xml, 0), self.node.name)
        except libvirt.libvirtError as exc:
            raise _error(f"start transient domain on {self.node.name}", exc) from exc

    def on_migration_pause(self, guest: Guest, callback: Callable[[], None]) -> int:
        """Call `callback` (in its own thread) when the domain pauses for a migration's
        switch-over; returns a handle for `drop_event`. Needs the event loop (always on)."""
        pauses = (libvirt.VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED,
                  libvirt.VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY)

        def lifecycle(_conn: object, _dom: object, event: int, detail: int,
                      _opaque: object) -> None:
            if event == libvirt.VIR_DOMAIN_EVENT_SUSPENDED and detail in pauses:
                threading.Thread(target=callback, name="switchover", daemon=True).start()

        try:
            return int(self.conn.domainEventRegisterAny(
                guest.dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, lifecycle, None))
        except libvirt.libvirtError as exc:
            raise _error(f"watch {guest.name} on {self.node.name}", exc) from exc

    def drop_event(self, handle: int) -> None:
        try:
            self.conn.domainEventDeregisterAny(handle)
        except libvirt.libvirtError:
            pass  # the connection is gone, and the registration with it

    def free_memory_bytes(self) -> int:
        try:
            return int(self.conn.getFreeMemory())
        except libvirt.libvirtError as exc:
            raise _error(f"free memory of {self.node.name}", exc) from exc

    def hostname(self) -> str:
        return str(self.conn.getHostname())

    def capabilities(self, guest: Guest | None = None) -> Capabilities:
        """What this node's QEMU/libvirt can do for migration (see fog.capabilities);
        with `guest`, whether that domain has KVM's dirty ring on too."""
        domain_xml = guest.xml() if guest else None
        # NOTE: the guest's own type (qemu = TCG, kvm): libvirt's default is the best the
        # host offers, and a host where /dev/kvm opens offers kvm even when guests use TCG.
        virt_type = _virt_type(domain_xml) if domain_xml else None
        try:
            xml = self.conn.getDomainCapabilities(None, None, None, virt_type, 0)
            versions = int(self.conn.getVersion()), int(self.conn.getLibVersion())
        except libvirt.libvirtError as exc:
            raise _error(f"capabilities of {self.node.name}", exc) from exc
        try:
            return detect(xml, *versions, domain_xml=domain_xml)
        except ValueError as exc:
            raise OrchestratorError(f"capabilities of {self.node.name}: {exc}") from None

    # --- storage (replicas of a proxy VM's static part) -----------------------------------

    def ensure_dir_pool(self, name: str, path: str) -> None:
        """A started `dir` storage pool at path (defined, built and started if missing).

        NOTE: a lab node's /var/lib/libvirt is private to the node, so the same path is a
        different directory per node; a pool there lets libvirt pre-create a migrating
        disk's destination volume.
        """
        try:
            pool = self.conn.storagePoolLookupByName(name)
        except libvirt.libvirtError:
            xml = (f"<pool type='dir'><name>{name}</name>"
                   f"<target><path>{path}</path></target></pool>")
            try:
                pool = self.conn.storagePoolDefineXML(xml, 0)
                pool.build(0)
            except libvirt.libvirtError as exc:
                raise _error(f"define pool {name} on {self.node.name}", exc) from exc
        try:
            if not pool.isActive():
                pool.create(0)
            pool.refresh(0)
        except libvirt.libvirtError as exc:
            raise _error(f"start pool {name} on {self.node.name}", exc) from exc

    def create_volume(self, pool: str, xml: str) -> str:
        """Create a volume from XML in a pool; returns its path."""
        try:
            vol = self.conn.storagePoolLookupByName(pool).createXML(xml, 0)
            return str(vol.path())
        except libvirt.libvirtError as exc:
            raise _error(f"create volume in {pool} on {self.node.name}", exc) from exc

    def upload_volume(self, pool: str, name: str, data: bytes) -> None:
        """Write data into an existing volume over the libvirt connection (a stream)."""
        try:
            vol = self.conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
            stream = self.conn.newStream(0)
            vol.upload(stream, 0, len(data), 0)
            for at in range(0, len(data), 1 << 20):  # NOTE: one send is capped below 32 MiB
                stream.send(data[at:at + (1 << 20)])
            stream.finish()
        except libvirt.libvirtError as exc:
            raise _error(f"upload volume {name} on {self.node.name}", exc) from exc

    def volume_path(self, pool: str, name: str) -> str | None:
        try:
            self.conn.storagePoolLookupByName(pool).refresh(0)
            return str(self.conn.storagePoolLookupByName(pool)
                       .storageVolLookupByName(name).path())
        except libvirt.libvirtError:
            return None

    def delete_volume(self, pool: str, name: str) -> None:
        """Delete a volume if it exists."""
        try:
            vol = self.conn.storagePoolLookupByName(pool).storageVolLookupByName(name)
        except libvirt.libvirtError:
            return
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise _error(f"delete volume {name} on {self.node.name}", exc) from exc


def _virt_type(domain_xml: str) -> str | None:
    found = re.search(r"<domain[^>]*\stype=['\"](\w+)['\"]", domain_xml)
    return found[1] if found else None


@contextmanager
def connect(node: FogNode, policy: NetworkPolicy) -> Iterator[Hypervisor]:
    hv = Hypervisor.open(node, policy)
    try:
        yield hv
    finally:
        hv.close()


def warm_capabilities(node: FogNode, policy: NetworkPolicy) -> None:
    """Make the node's libvirtd probe (and cache) its QEMU binary now rather than later."""
    with connect(node, policy) as hv:
        try:
            hv.conn.getDomainCapabilities(None, "x86_64", None, "qemu", 0)
        except libvirt.libvirtError as exc:
            raise _error(f"domain capabilities of {node.name}", exc) from exc


def wait_until_reachable(node: FogNode, policy: NetworkPolicy, timeout_s: float = 20.0) -> None:
    """Poll until the node's libvirtd accepts a connection (daemons start asynchronously)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            Hypervisor.open(node, policy).close()
            return
        except UnsafeDestination:
            raise
        except OrchestratorError as exc:
            if time.monotonic() > deadline:
                raise OrchestratorError(f"fog node {node.name} not reachable: {exc}") from exc
            time.sleep(0.1)
