"""The KVM probe: KVM only if a test guest really boots (and powers off) within the timeout;
a scripted hypervisor and an injected clock stand in for libvirt and time."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.errors import OrchestratorError
from orchestrator.fog.probe import PROBE_NAME, choose_domain_type, kvm_boots
from orchestrator.images import GuestImage


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


class ProbeGuest:
    def __init__(self, clock: FakeClock, powers_off_after_s: float | None) -> None:
        self.clock, self.off_at = clock, powers_off_after_s
        self.destroyed = False

    def is_active(self) -> bool:
        return self.off_at is None or self.clock.now < self.off_at

    def destroy(self) -> None:
        self.destroyed = True


class ProbeHypervisor:
    def __init__(self, guest: ProbeGuest | None) -> None:
        self.guest = guest
        self.started: list[str] = []

    def start_transient(self, xml: str) -> ProbeGuest:
        self.started.append(xml)
        if self.guest is None:
            raise OrchestratorError("unsupported configuration: Domain requires KVM")
        return self.guest


IMAGE = GuestImage(Path("/srv/images"))


def test_a_guest_that_powers_off_in_time_means_kvm_works():
    clock = FakeClock()
    hv = ProbeHypervisor(ProbeGuest(clock, powers_off_after_s=1.5))
    assert kvm_boots(hv, IMAGE, timeout_s=10.0, clock=clock, sleep=clock.sleep)
    assert "<domain type=\"kvm\">" in hv.started[0] and PROBE_NAME in hv.started[0]
    assert "poweroff" in hv.started[0]
    assert clock.now < 2.0 and not hv.guest.destroyed


def test_a_hanging_kvm_guest_is_destroyed_at_the_timeout_and_tcg_is_chosen():
    # /dev/kvm exists but nested KVM spins: the guest never gets to power off.
    clock = FakeClock()
    guest = ProbeGuest(clock, powers_off_after_s=None)
    assert not kvm_boots(ProbeHypervisor(guest), IMAGE, timeout_s=10.0, clock=clock,
                         sleep=clock.sleep)
    assert guest.destroyed and clock.now == pytest.approx(10.0, abs=0.11)


def test_no_kvm_at_all_means_tcg():
    assert choose_domain_type(ProbeHypervisor(None), IMAGE) == "qemu"


def test_choose_domain_type_says_kvm_when_the_probe_boots():
    hv = ProbeHypervisor(ProbeGuest(FakeClock(), powers_off_after_s=0.0))
    assert choose_domain_type(hv, IMAGE) == "kvm"
