"""Where the guest kernel and initramfs are, and what the guest's kernel command line says."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from agent.guest.edgeiot_agent import wire
from orchestrator.errors import OrchestratorError

DEFAULT_IMAGE_DIR = Path(__file__).resolve().parents[1] / "images" / "out"
AGENT_PORT = wire.CONTROL_PORT


@dataclass(frozen=True)
class GuestImage:
    directory: Path

    @property
    def kernel(self) -> Path:
        """The kernel to boot: the manifest's `boot_kernel` (an uncompressed PVH vmlinux boots
        seconds faster under TCG), else the packaged vmlinuz."""
        return self.directory / str(self.manifest().get("boot_kernel", "vmlinuz"))

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    def check(self) -> GuestImage:
        for path in (self.kernel, self.initrd):
            if not path.is_file():
                raise OrchestratorError(f"guest image missing ({path}): run 'make image'")
        return self

    def copy_to(self, directory: Path) -> GuestImage:
        """A frozen copy (kernel, initramfs, manifest) that later builds cannot change."""
        directory.mkdir(parents=True, exist_ok=True)
        for path in (self.directory / "manifest.json", self.kernel, self.initrd):
            if path.exists():
                shutil.copy2(path, directory / path.name)
        return GuestImage(directory).check()

    def manifest(self) -> dict[str, object]:
        try:
            data: dict[str, object] = json.loads((self.directory / "manifest.json").read_text())
        except (OSError, ValueError):
            return {}
        return data


def local_image() -> GuestImage:
    return GuestImage(Path(os.environ.get("EDGEIOT_IMAGE_DIR", DEFAULT_IMAGE_DIR)))


def guest_cmdline(name: str, address: str | None, prefix_len: int | None,
                  gateway: str | None = None, role: str = "proxy", tcg: bool = False,
                  key: str | None = None) -> str:
    """Kernel command line of a VM; the initramfs configures eth0 from it and the agent
    takes its role (proxy or app) and its control key from it.

    Why the key travels here: the command line is part of the domain definition, which
    reaches the guest out of band (never over the lab network) and moves with a live
    migration, so the VM keeps its key wherever it runs.
    """
    parts = ["console=ttyS0", "quiet", "panic=-1", f"edgeiot.name={name}",
             f"edgeiot.role={role}"]
    if key is not None:
        if not wire.is_key(key):  # a space or '=' would smuggle other parameters in
            raise ValueError("a VM key must be 64 lowercase hex characters")
        parts.append(f"{wire.KEY_CMDLINE}={key}")
    if tcg:
        # NOTE: QEMU < 9.0 under TCG loses dirty pages written through cached softmmu TLB
        # entries during pre-copy (fixed upstream by 03bfc2188f); a guest with page-table
        # isolation flushes its TLB on every kernel entry and exit, which closes the window.
        # See docs/tcg-migration-corruption.md.
        parts.append("pti=on")
    if address and prefix_len:
        parts.append(f"edgeiot.ip={address}/{prefix_len}")
    if gateway:
        parts.append(f"edgeiot.gw={gateway}")
    return " ".join(parts)


# NOTE: everything after "--" on the kernel command line goes to init as arguments, and
# busybox run as /bin/busybox dispatches on its first argument: this guest powers off as
# soon as the kernel has booted, which is all a hypervisor probe needs to see.
PROBE_CMDLINE = "console=ttyS0 quiet panic=-1 rdinit=/bin/busybox -- poweroff -f"
