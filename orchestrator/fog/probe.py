"""Choose the domain type by experiment: KVM only if a guest really boots under it.

On nested setups /dev/kvm can open and create VMs whose vCPUs then spin in the host kernel
forever, so "the device exists" proves nothing. The probe boots the project's kernel with an
init that powers off at once, and accepts KVM only if the domain is gone within a timeout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from orchestrator.errors import OrchestratorError
from orchestrator.fog.domain_xml import DomainSpec, to_xml
from orchestrator.fog.hypervisor import Hypervisor
from orchestrator.images import PROBE_CMDLINE, GuestImage

PROBE_NAME = "edgeiot-kvm-probe"


def probe_spec(image: GuestImage) -> DomainSpec:
    return DomainSpec(name=PROBE_NAME, uuid=str(uuid.uuid4()), memory_mib=128, vcpus=1,
                      domain_type="kvm", kernel=str(image.kernel), initrd=str(image.initrd),
                      cmdline=PROBE_CMDLINE)


def kvm_boots(hv: Hypervisor, image: GuestImage, timeout_s: float = 10.0,
              clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> bool:
    try:
        guest = hv.start_transient(to_xml(probe_spec(image)))
    except OrchestratorError:
        return False  # no KVM support at all
    deadline = clock() + timeout_s
    while clock() < deadline:
        if not guest.is_active():
            return True
        sleep(0.1)
    guest.destroy()
    return False


def choose_domain_type(hv: Hypervisor, image: GuestImage) -> str:
    return "kvm" if kvm_boots(hv, image) else "qemu"
