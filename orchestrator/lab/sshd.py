"""sshd inside a lab fog node, so Ansible and paramiko see each node as a separate host.

sshd runs in the node's network *and* mount namespaces (`Lab.enter_argv`), so a playbook
that edits /etc/libvirt on "that host" edits the node's private copy. Everything it needs is
generated per lab under the lab's state directory and passed on the command line: one host
key per node, one client key per lab (authorised for root on every node), the config and the
pid file. sshd listens on the node's lab address only. `known_hosts` is seeded from the
generated host keys, so clients verify hosts strictly from the first connection.

`Lab.down()` ends every process in the lab's namespaces by pid, which covers sshd;
`stop_sshd` is for taking SSH away from a lab that stays up.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.lab import state
from orchestrator.lab.builder import Lab, terminate
from orchestrator.lab.daemons import read_pid
from orchestrator.runner import LocalRunner, Runner

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and insists on an absolute path
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
PRIVSEP_DIR = Path("/run/sshd")  # what Debian's sshd.service creates; sshd refuses without it
SSH_PORT = 22


@dataclass(frozen=True)
class LabSshPaths:
    """Where a lab's SSH material lives (under the lab's state directory)."""

    root: Path

    @property
    def client_key(self) -> Path:
        return self.root / "id_ed25519"

    @property
    def authorized_keys(self) -> Path:
        return self.root / "authorized_keys"

    @property
    def known_hosts(self) -> Path:
        return self.root / "known_hosts"

    def node_dir(self, node: str) -> Path:
        return self.root / node

    def host_key(self, node: str) -> Path:
        return self.node_dir(node) / "ssh_host_ed25519_key"

    def config(self, node: str) -> Path:
        return self.node_dir(node) / "sshd_config"

    def pidfile(self, node: str) -> Path:
        return self.node_dir(node) / "sshd.pid"

    def log(self, node: str) -> Path:
        return self.node_dir(node) / "sshd.log"


def ssh_paths(lab: Lab) -> LabSshPaths:
    return LabSshPaths(lab.paths.root / "ssh")


def sshd_config(address: str, host_key: Path, pidfile: Path, authorized_keys: Path) -> str:
    """The node's sshd configuration; pure."""
    # NOTE: StrictModes off because the state directory may sit under /tmp (world-writable
    # parents); the files themselves are 0600 and the daemon only accepts the lab's key.
    return "\n".join([
        f"ListenAddress {address}",
        f"Port {SSH_PORT}",
        f"HostKey {host_key}",
        f"PidFile {pidfile}",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "X11Forwarding no",
        "AllowTcpForwarding no",
        "PrintMotd no",
        "AcceptEnv LANG LC_*",
        f"Subsystem sftp {SFTP_SERVER}",
        "",
    ])


def known_hosts_line(address: str, public_key: str) -> str:
    """`ADDRESS TYPE BASE64` from a `TYPE BASE64 COMMENT` public key line; pure."""
    kind, blob = public_key.split()[:2]
    return f"{address} {kind} {blob}"


def _keygen(path: Path, comment: str, runner: Runner) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        runner.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)])
    path.chmod(0o600)


def ensure_keys(lab: Lab, runner: Runner | None = None) -> LabSshPaths:
    """Generate the lab's client key and every node's host key (once), write authorized_keys
    and a known_hosts file naming each node's address with its host key."""
    runner = runner or LocalRunner()
    paths = ssh_paths(lab)
    paths.root.mkdir(parents=True, exist_ok=True)
    paths.root.chmod(0o700)
    prefix = lab.spec.prefix
    _keygen(paths.client_key, f"edgeiot-lab-{prefix}", runner)
    paths.authorized_keys.write_text(Path(f"{paths.client_key}.pub").read_text())
    paths.authorized_keys.chmod(0o600)
    lines = []
    for node in lab.topology.nodes:
        _keygen(paths.host_key(node.name), f"{prefix}-{node.name}", runner)
        public = Path(f"{paths.host_key(node.name)}.pub").read_text()
        lines.append(known_hosts_line(node.address, public))
    paths.known_hosts.write_text("\n".join(lines) + "\n")
    return paths


def _node_address(lab: Lab, node: str) -> str:
    plan = next((n for n in lab.topology.nodes if n.name == node), None)
    if plan is None:
        raise UserError(f"unknown fog node {node!r}")
    return plan.address


def running_pid(pidfile: Path) -> int | None:
    """The pid in the file if that process is an sshd, else None."""
    pid = read_pid(pidfile)
    try:
        return pid if pid and psutil.Process(pid).name() == "sshd" else None
    except psutil.NoSuchProcess:
        return None


def start_sshd(lab: Lab, node: str, runner: Runner | None = None,
               timeout_s: float = 10.0) -> int:
    """Start sshd inside the node's namespaces (if it is not running yet); returns its pid."""
    runner = runner or LocalRunner()
    address = _node_address(lab, node)
    paths = ensure_keys(lab, runner)
    pid = running_pid(paths.pidfile(node))
    if pid is not None:
        return pid
    paths.pidfile(node).unlink(missing_ok=True)
    paths.config(node).write_text(sshd_config(address, paths.host_key(node),
                                              paths.pidfile(node), paths.authorized_keys))
    PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
    runner.run([*lab.enter_argv(node), SSHD, "-f", str(paths.config(node)),
                "-E", str(paths.log(node))], timeout=30)
    pid = _wait_for_pid(paths.pidfile(node), timeout_s)
    _record_pid(lab, node, pid)
    return pid


def _wait_for_pid(pidfile: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = running_pid(pidfile)
        if pid is not None:
            return pid
        time.sleep(0.05)
    raise OrchestratorError(f"sshd did not write {pidfile} within {timeout_s} s "
                            f"(see {pidfile.with_name('sshd.log')})")


def _record_pid(lab: Lab, node: str, pid: int | None) -> None:
    """Note the pid in the lab's state file, next to the node's libvirtd pid."""
    record = state.load(lab.paths)
    if record is None:
        return
    for entry in record.get("nodes", []):
        if entry.get("name") == node:
            if pid is None:
                entry.pop("sshd_pid", None)
            else:
                entry["sshd_pid"] = pid
    state.save(lab.paths, record)


def stop_sshd(lab: Lab, node: str) -> bool:
    """End the node's sshd (by the pid it wrote); True if one was running."""
    paths = ssh_paths(lab)
    pid = running_pid(paths.pidfile(node))
    if pid is not None:
        terminate([pid])
    paths.pidfile(node).unlink(missing_ok=True)
    if state.load(lab.paths) is not None:
        _record_pid(lab, node, None)
    return pid is not None


def start_all(lab: Lab, runner: Runner | None = None) -> dict[str, int]:
    return {n.name: start_sshd(lab, n.name, runner) for n in lab.topology.nodes}


def stop_all(lab: Lab) -> int:
    return sum(stop_sshd(lab, n.name) for n in lab.topology.nodes)


def lab_inventory(lab: Lab, extra_vars: dict[str, str] | None = None) -> str:
    """An Ansible INI inventory: the lab's nodes over the lab's sshd, the orchestrator and
    monitoring roles on this machine (local connection).

    Deploy-only variables sit in a `[lab:vars]` group whose children are the fog nodes, so
    `orchestrator.fog.inventory` (which reads only `fog_nodes` and `all`) still accepts it.
    """
    paths = ssh_paths(lab)
    hosts = [f"{n.name} ansible_host={n.address} libvirt_uri=qemu+tcp://{n.address}/system"
             for n in lab.topology.nodes]
    ssh_args = f"-o UserKnownHostsFile={paths.known_hosts} -o StrictHostKeyChecking=yes"
    lab_vars = {
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(paths.client_key),
        "ansible_ssh_common_args": f"'{ssh_args}'",
        "edgeiot_lab_mode": "true",
        # NOTE: lab nodes share this machine's /usr: the agent runs on this venv's Python
        "host_agent_python": sys.executable,
        **(extra_vars or {}),
    }
    local = "localhost ansible_connection=local"
    return "\n".join([
        "# generated by orchestrator.lab.sshd for lab " + lab.spec.prefix,
        "[fog_nodes]", *hosts, "",
        "[cloud]", "",
        "[orchestrator]", local, "",
        "[monitoring]", local, "",
        "[lab:children]", "fog_nodes", "orchestrator", "monitoring", "",
        "[lab:vars]", *(f"{k}={v}" for k, v in lab_vars.items()), "",
    ])


def ensure_root() -> None:
    if os.geteuid() != 0:
        raise UserError("starting sshd in the lab's namespaces needs root")
