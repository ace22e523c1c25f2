"""Per-node libvirtd and virtlogd: private directories, configuration, launch, readiness.

Each fog node runs its own daemons inside its network namespace *and* a private mount
namespace where the node's own directories are bind-mounted over libvirt's standard paths
(/etc/libvirt, /run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt). To the
daemons each node is then a separate host. The configuration text is produced by pure
functions; the launch goes through `orchestrator.lab.nodeinit`, a tiny program run under
`ip netns exec NS unshare --mount`.
"""

from __future__ import annotations

import shutil
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

from orchestrator.errors import UserError
from orchestrator.fog.domain_xml import ANTI_SPOOF_FILTER
from orchestrator.lab.topology import NodePlan
from orchestrator.runner import NamespaceRunner, Runner

LIBVIRT_PATHS = {
    "etc": "/etc/libvirt",
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "log": "/var/log/libvirt",
    "cache": "/var/cache/libvirt",
}


def host_uuid() -> str:
    """A random host UUID; libvirt rejects UUIDs of repeated digits, uuid4 never is one."""
    return str(uuid.uuid4())


def libvirtd_conf(address: str, host_id: str) -> str:
    # NOTE: lab only: plain TCP without authentication, bound to the node's lab address
    # alone. Real hosts get TLS from the fog_node playbook.
    return "\n".join([
        "listen_tls = 0",
        "listen_tcp = 1",
        f'listen_addr = "{address}"',
        'auth_tcp = "none"',
        'auth_unix_rw = "none"',
        f'host_uuid = "{host_id}"',
        'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"',
        "",
    ])


def qemu_conf(address: str) -> str:
    # NOTE: migration_address/migration_host pin the migration stream to the lab network.
    # The lab runs QEMU as root without a security driver: the namespaces are the isolation,
    # and no cgroup tree is mounted inside `ip netns exec`'s private /sys.
    return "\n".join([
        f'migration_address = "{address}"',
        f'migration_host = "{address}"',
        'user = "root"',
        'group = "root"',
        "dynamic_ownership = 0",
        'security_driver = "none"',
        "cgroup_controllers = [ ]",
        "",
    ])


@dataclass(frozen=True)
class NodeDirs:
    root: Path

    def path(self, key: str) -> Path:
        return self.root / key

    @property
    def libvirtd_pidfile(self) -> Path:
        return self.root / "libvirtd.pid"

    @property
    def virtlogd_pidfile(self) -> Path:
        return self.root / "virtlogd.pid"

    def bind_pairs(self) -> list[tuple[str, str]]:
        return [(str(self.path(k)), target) for k, target in LIBVIRT_PATHS.items()]


def prepare_node_dirs(dirs: NodeDirs, node: NodePlan) -> str:
    """Create the node's private libvirt tree and configuration; returns its host UUID."""
    for key in LIBVIRT_PATHS:
        dirs.path(key).mkdir(parents=True, exist_ok=True)
    etc = dirs.path("etc")
    shutil.copytree(LIBVIRT_PATHS["etc"], etc, dirs_exist_ok=True)
    require_nwfilters(etc)
    # NOTE: no autostarted libvirt networks: they would start dnsmasq inside the node.
    shutil.rmtree(etc / "qemu" / "networks" / "autostart", ignore_errors=True)
    for sub in ("qemu", "qemu/channel/target", "qemu/save", "qemu/snapshot"):
        (dirs.path("lib") / sub).mkdir(parents=True, exist_ok=True)
    (dirs.path("log") / "qemu").mkdir(parents=True, exist_ok=True)
    identity = host_uuid()
    (etc / "libvirtd.conf").write_text(libvirtd_conf(node.address, identity))
    (etc / "qemu.conf").write_text(qemu_conf(node.address))
    return identity


def require_nwfilters(etc: Path) -> None:
    """Refuse a node without libvirt's stock nwfilters, before any daemon starts.

    NOTE: every VM NIC with a lab address references `clean-traffic` (anti-spoofing, see
    orchestrator.fog.domain_xml). A node whose libvirtd lacks it cannot start such a VM, or
    take one in by migration, and says so only at that moment; the filters come with the
    libvirt-daemon-config-nwfilter package and each node copies them from /etc/libvirt.
    """
    if not (etc / "nwfilter" / f"{ANTI_SPOOF_FILTER}.xml").is_file():
        raise UserError(f"libvirt's nwfilter '{ANTI_SPOOF_FILTER}' is missing from "
                        f"{LIBVIRT_PATHS['etc']}/nwfilter: install libvirt-daemon-config-nwfilter "
                        "(scripts/install-debian-packages.sh)")


def start_daemons(node: NodePlan, dirs: NodeDirs, runner: Runner) -> None:
    """Start virtlogd and libvirtd inside the node's network and a new private mount namespace."""
    argv = ["unshare", "--mount", "--propagation", "private", "--",
            sys.executable, "-m", "orchestrator.lab.nodeinit", "--node-dir", str(dirs.root)]
    NamespaceRunner(node.namespace, runner).run(argv, timeout=60)


def seed_capabilities(first_node_dir: Path, dirs: NodeDirs) -> None:
    """Copy the first node's QEMU capabilities cache into a node about to start.

    NOTE: a fresh libvirtd probes the QEMU binary on first use (~4 s under TCG), which
    would land inside the first migration to that node and distort its timing. All lab
    nodes share one binary, kernel and libvirt, so one probe serves them all; libvirt
    still revalidates the cached entry against the binary's ctime and its own version.
    """
    source = first_node_dir / "cache" / "qemu" / "capabilities"
    if source.is_dir():
        shutil.copytree(source, dirs.path("cache") / "qemu" / "capabilities", dirs_exist_ok=True)


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
