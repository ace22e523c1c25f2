"""The lab's SDN core: Open vSwitch (userspace datapath) driven by the lab's own controller.

`SdnNetwork` is the `LabNetwork` of a lab built with `--core sdn`. It keeps the Linux-bridge
core's names and order, so nothing above notices the difference:
  * the OVS bridge is called `<prefix>-core` like the Linux bridge, and its internal port
    (a tap in the root namespace under that same name) carries the gateway address, bound
    before any node exists: the route to the lab subnet, and the netguard's "lab bridge";
  * each node's root-side veth `<prefix>-<node>c` becomes OVS port number i (ofport_request),
    so the controller knows the ports without asking.

NOTE: there is no openvswitch kernel module on these machines, so the bridge uses the
userspace datapath (`datapath_type=netdev`). It does not complete partial checksums of
packets it forwards between veths, so TCP silently fails unless checksum offload is off on
both ends of every veth (`ethtool -K … tx off`): the kernel then checksums before the veth.

OVS runs by hand, never as a system service: ovsdb-server with its own database and
ovs-vswitchd, with every socket, pid file and log under `<lab dir>/ovs/`, named with the lab
prefix; the controller (`python -m orchestrator.lab.controller`) listens for OpenFlow on
loopback and serves its JSON API on loopback. `stop_core` ends them by their pid files (only
if the process really is the one the file names) and removes the directory: it needs no
state file, so it also cleans up after a crash.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from orchestrator.errors import OrchestratorError
from orchestrator.lab.controller.api import ControllerClient
from orchestrator.lab.network import LabNetwork, bridge_mac
from orchestrator.lab.topology import VM_BRIDGE, NodePlan, Topology
from orchestrator.runner import NamespaceRunner, Runner

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
API_HOST = "127.0.0.1"


@dataclass(frozen=True)
class OvsFiles:
    """Every file of a lab's OVS instance and controller, named with the lab prefix."""

    directory: Path
    prefix: str

    def _f(self, suffix: str) -> Path:
        return self.directory / f"{self.prefix}-{suffix}"

    @property
    def db(self) -> Path:
        return self._f("conf.db")

    @property
    def db_sock(self) -> Path:
        return self._f("db.sock")

    @property
    def controller_config(self) -> Path:
        return self._f("controller.json")

    def pidfile(self, daemon: str) -> Path:
        return self._f(f"{daemon}.pid")

    def log(self, daemon: str) -> Path:
        return self._f(f"{daemon}.log")

    def ctl(self, daemon: str) -> Path:
        return self._f(f"{daemon}.ctl")


DAEMONS = ("controller", "ovs-vswitchd", "ovsdb-server")  # stop order


def ovs_files(lab_root: Path, prefix: str) -> OvsFiles:
    return OvsFiles(lab_root / "ovs", prefix)


def free_port(host: str = API_HOST) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def read_config(files: OvsFiles) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(files.controller_config.read_text())
    except (OSError, ValueError):
        return None
    return data


def controller_client(files: OvsFiles) -> ControllerClient | None:
    """A client for the lab's controller, None when the lab has no SDN core."""
    config = read_config(files)
    if config is None:
        return None
    return ControllerClient(f"http://{config['api_host']}:{config['api_port']}")


def switchover_mover(lab_root: Path, prefix: str, mac: str,
                     warn: Callable[[str], None]) -> Callable[[str, str], object] | None:
    """The migration service's switch-over hook on a lab with the SDN core: the controller
    moves the VM's flows to the destination as the source pauses. None without the core.

    A failed move only costs the client a longer gap (the network still learns from QEMU's
    announcement), so it is a warning, never a failed migration."""
    client = controller_client(ovs_files(lab_root, prefix))
    if client is None:
        return None

    def move(_vm: str, destination: str) -> object:
        try:
            return client.move(mac, destination)
        except OrchestratorError as exc:
            warn(f"flow move failed: {exc}")
            return None
    return move


class SdnNetwork(LabNetwork):
    """LabNetwork whose core is OVS + the controller instead of a Linux bridge."""

    def __init__(self, topology: Topology, lab_root: Path, runner: Runner | None = None) -> None:
        super().__init__(topology, runner)
        self.files = ovs_files(lab_root, topology.spec.prefix)
        self.client: ControllerClient | None = None

    def _env(self) -> dict[str, str]:
        d = str(self.files.directory)
        return {**os.environ, "OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d}

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, env=self._env(), capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise OrchestratorError(f"{' '.join(argv)}: {done.stderr.strip()[-300:]}")

    def vsctl(self, *args: str) -> None:
        self._run(["ovs-vsctl", f"--db=unix:{self.files.db_sock}", "--timeout=30", *args])

    # --- core ---------------------------------------------------------------------------

    def create_core(self) -> None:
        """OVS daemons, the netdev bridge, the gateway on its internal port, the controller."""
        t, f = self.topology, self.files
        f.directory.mkdir(parents=True, exist_ok=True)
        self._start_ovs()
        self.vsctl("add-br", t.bridge, "--", "set", "bridge", t.bridge, "datapath_type=netdev",
                   "protocols=OpenFlow13", "fail_mode=secure",
                   "other_config:disable-in-band=true")
        self.runner.run(["ip", "addr", "add", f"{t.gateway}/{t.prefix_len}", "dev", t.bridge])
        self.runner.run(["ip", "link", "set", t.bridge, "up"])
        self.runner.run(["ethtool", "-K", t.bridge, "tx", "off"], check=False)
        gateway_mac = Path(f"/sys/class/net/{t.bridge}/address").read_text().strip()
        self._start_controller(gateway_mac)
        self.vsctl("set-controller", t.bridge, f"tcp:{API_HOST}:{self._config()['ofp_port']}",
                   "--", "set", "controller", t.bridge, "connection-mode=out-of-band")
        self._wait_connected()

    def _start_ovs(self) -> None:
        f = self.files
        self._run(["ovsdb-tool", "create", str(f.db), str(OVS_SCHEMA)])
        self._run(["ovsdb-server", str(f.db), f"--remote=punix:{f.db_sock}",
                   f"--pidfile={f.pidfile('ovsdb-server')}", "--detach", "--no-chdir",
                   f"--log-file={f.log('ovsdb-server')}",
                   f"--unixctl={f.ctl('ovsdb-server')}"])
        self.vsctl("--no-wait", "init")
        self._run(["ovs-vswitchd", f"unix:{f.db_sock}", "--detach", "--no-chdir",
                   f"--pidfile={f.pidfile('ovs-vswitchd')}",
                   f"--log-file={f.log('ovs-vswitchd')}",
                   f"--unixctl={f.ctl('ovs-vswitchd')}"])

    def _config(self) -> dict[str, Any]:
        config = read_config(self.files)
        if config is None:
            raise OrchestratorError(f"{self.files.controller_config} is missing")
        return config

    def _start_controller(self, gateway_mac: str) -> None:
        f, spec = self.files, self.topology.spec
        config = {"prefix": spec.prefix, "bridge": self.topology.bridge,
                  "ofp_host": API_HOST, "ofp_port": free_port(),
                  "api_host": API_HOST, "api_port": free_port(),
                  "gateway": self.topology.gateway, "gateway_mac": gateway_mac,
                  "migration_mbit": spec.migration_mbit,
                  "locate_endpoint": None}
        f.controller_config.write_text(json.dumps(config, indent=2))
        with open(f.log("controller"), "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.lab.controller", str(f.controller_config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        f.pidfile("controller").write_text(f"{proc.pid}\n")
        self.client = ControllerClient(f"http://{API_HOST}:{config['api_port']}", timeout_s=5)

    def _wait_connected(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                if self._client().stats().get("connected"):
                    return
            except OrchestratorError as exc:
                last = exc
            time.sleep(0.2)
        raise OrchestratorError(f"the SDN controller did not take the switch within "
                                f"{timeout_s:g} s ({last}); see {self.files.log('controller')}")

    def _client(self) -> ControllerClient:
        if self.client is None:
            self.client = controller_client(self.files)
        if self.client is None:
            raise OrchestratorError("the lab has no SDN controller")
        return self.client

    # --- nodes --------------------------------------------------------------------------

    def create_node(self, node: NodePlan) -> None:
        """As LabNetwork.create_node, but the core veth becomes an OVS port (see module doc)."""
        r, ns = self.runner, NamespaceRunner(node.namespace, self.runner)
        port = 1 + [n.name for n in self.topology.nodes].index(node.name)
        r.run(["ip", "netns", "add", node.namespace])
        ns.run(["ip", "link", "set", "lo", "up"])
        r.run(["ip", "link", "add", node.core_veth, "type", "veth",
               "peer", "name", node.node_veth, "netns", node.namespace])
        r.run(["ethtool", "-K", node.core_veth, "tx", "off"])
        ns.run(["ethtool", "-K", node.node_veth, "tx", "off"])
        r.run(["ip", "link", "set", node.core_veth, "up"])
        self.vsctl("add-port", self.topology.bridge, node.core_veth, "--", "set", "interface",
                   node.core_veth, f"ofport_request={port}")
        mac = bridge_mac(node.address)  # pinned: see bridge_mac; the proactive rule needs it
        ns.run(["ip", "link", "add", VM_BRIDGE, "address", mac, "type", "bridge"])
        ns.run(["ip", "link", "set", node.node_veth, "master", VM_BRIDGE, "up"])
        ns.run(["ip", "addr", "add", f"{node.address}/{self.topology.prefix_len}",
                "dev", VM_BRIDGE])
        ns.run(["ip", "link", "set", VM_BRIDGE, "up"])
        self._client().add_node(node.name, port, mac)

    def core_stats(self) -> dict[str, Any]:
        return self._client().stats()


def _is_ours(pid: int, marker: str) -> bool:
    """Is pid still the process a pid file named (its command line names our file)?"""
    try:
        return any(marker in arg for arg in psutil.Process(pid).cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def stop_core(lab_root: Path, prefix: str, grace_s: float = 5.0) -> int:
    """End the lab's controller, ovs-vswitchd and ovsdb-server (by pid file), remove their
    files; idempotent, and a no-op for a lab without an SDN core. Returns processes ended."""
    files = ovs_files(lab_root, prefix)
    if not files.directory.exists():
        return 0
    ended = 0
    for daemon in DAEMONS:
        pidfile = files.pidfile(daemon)
        pid = _read_pid(pidfile)
        marker = str(files.controller_config if daemon == "controller" else pidfile)
        if pid is None or not _is_ours(pid, marker):
            continue
        proc = psutil.Process(pid)
        try:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except psutil.TimeoutExpired:
                proc.kill()
                proc.wait(grace_s)
        except psutil.NoSuchProcess:
            pass
        ended += 1
    shutil.rmtree(files.directory, ignore_errors=True)
    return ended
