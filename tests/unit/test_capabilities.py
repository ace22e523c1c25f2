"""Capability detection on domain-capabilities XML of both QEMU versions the lab may run:
QEMU 7.2 / libvirt 9.0 (captured on a lab node) and QEMU 10.0 / libvirt 11.3 (constructed,
see the file's header), plus the dirty-rate stats parser."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.fog.capabilities import (
    Capabilities,
    detect,
    parse_dirty_rate,
    parse_domain_caps,
    parse_version_text,
    split_version,
)

DATA = Path(__file__).resolve().parents[1] / "data"
QEMU72 = (DATA / "domcaps-qemu-7.2-tcg.xml").read_text()
KVM72 = (DATA / "domcaps-kvm-7.2.xml").read_text()
QEMU100 = (DATA / "domcaps-qemu-10.0-tcg.xml").read_text()
RING_ON = ("<domain type='kvm'><name>v</name><features><kvm><dirty-ring state='on' size='4096'/>"
           "</kvm></features></domain>")
TCG_DOMAIN = "<domain type='qemu'><name>v</name><features><acpi/></features></domain>"


def test_versions_decode_like_libvirt():
    assert split_version(7002022) == (7, 2, 22)
    assert split_version(11003000) == (11, 3, 0)
    assert parse_version_text("10.0.2") == (10, 0, 2) and parse_version_text("7.2") == (7, 2, 0)
    with pytest.raises(ValueError):
        parse_version_text("seven")


def test_captured_qemu_72_tcg():
    caps = detect(QEMU72, 7002022, 9000000, TCG_DOMAIN)
    assert (caps.qemu, caps.virt_type, caps.kvm) == ("7.2.22", "qemu", False)
    assert caps.tcg_loses_dirty_pages  # QEMU < 9.0 under TCG: pti=on is still needed
    assert caps.dirty_rate_refusal("page-sampling") is None
    assert "TCG" in (caps.dirty_rate_refusal("dirty-bitmap") or "")
    assert "KVM" in (caps.dirty_rate_refusal("dirty-ring") or "")
    assert caps.policies == ("abort", "auto-converge", "postcopy")
    reason = caps.policy_refusal("dirty-limit") or ""
    assert "TCG" in reason and "\n" not in reason


def test_constructed_qemu_100_tcg():
    caps = detect(QEMU100, 10000002, 11003000, TCG_DOMAIN)
    assert (caps.qemu, caps.virt_type) == ("10.0.2", "qemu")
    assert not caps.tcg_loses_dirty_pages  # fixed in QEMU 9.0
    assert caps.dirty_rate_refusal("page-sampling") is None
    assert caps.dirty_rate_refusal("dirty-bitmap") is not None  # reads 0 under TCG
    assert caps.policy_refusal("dirty-limit") is not None


def test_machine_name_stands_in_for_a_missing_version():
    assert parse_domain_caps(QEMU100).machine_version == (10, 0)
    assert detect(QEMU72, 0, 9000000).qemu_version == (7, 2, 0)


def test_dirty_limit_needs_kvm_a_recent_stack_and_the_dirty_ring():
    assert "8.1" in (detect(KVM72, 7002022, 9000000, RING_ON).policy_refusal("dirty-limit") or "")
    kvm_new = Capabilities((10, 0, 2), (9, 0, 0), "kvm", dirty_ring_enabled=True)
    assert "libvirt 10.0" in (kvm_new.policy_refusal("dirty-limit") or "")
    no_ring = Capabilities((10, 0, 2), (11, 3, 0), "kvm")
    assert "dirty-ring" in (no_ring.policy_refusal("dirty-limit") or "")
    ready = Capabilities((10, 0, 2), (11, 3, 0), "kvm", dirty_ring_enabled=True)
    assert ready.policies == ("abort", "auto-converge", "postcopy", "dirty-limit")
    assert ready.dirty_rate_refusal("dirty-ring") is None
    assert ready.dirty_rate_refusal("dirty-bitmap") is None


def test_old_stacks_have_no_dirty_rate_calculation():
    assert "5.2" in (Capabilities((5, 1, 0), (9, 0, 0), "qemu").dirty_rate_refusal(
        "page-sampling") or "")
    assert "7.2" in (Capabilities((7, 2, 0), (7, 1, 0), "qemu").dirty_rate_refusal(
        "page-sampling") or "")


def test_unknown_modes_and_policies_are_named():
    caps = detect(QEMU72, 7002022, 9000000)
    assert "unknown dirty-rate mode" in (caps.dirty_rate_refusal("sonar") or "")
    assert "unknown convergence policy" in (caps.policy_refusal("pray") or "")


@pytest.mark.parametrize("text", ["", "<capabilities/>", "<domainCapabilities"])
def test_not_domain_capabilities_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_domain_caps(text)


def test_dirty_rate_stats_only_once_measured():
    measuring = {"dirtyrate.calc_status": 1, "dirtyrate.megabytes_per_second": 0}
    assert parse_dirty_rate(measuring) is None
    done = {"dirtyrate.calc_status": 2, "dirtyrate.megabytes_per_second": 12,
            "dirtyrate.calc_period": 1, "dirtyrate.calc_mode": "page-sampling"}
    rate = parse_dirty_rate(done)
    assert rate is not None and rate.mib_s == 12 and rate.window_s == 1
    assert rate.pages_s() == 12 * 256  # 12 MiB/s of 4 KiB pages


# --------------------------------------------------------------------------- the measurement

import libvirt  # noqa: E402

from orchestrator.errors import OrchestratorError  # noqa: E402
from orchestrator.fog.hypervisor import Guest  # noqa: E402


class FakeDom:
    """startDirtyRateCalc + domainListGetStats, answering 'measuring' `pending` times."""

    def __init__(self, mib_s: int = 12, pending: int = 2) -> None:
        self.started: list[tuple[int, int]] = []
        self.mib_s, self.pending = mib_s, pending

    def name(self) -> str:
        return "v1"

    def startDirtyRateCalc(self, seconds: int, flags: int) -> None:  # noqa: N802
        self.started.append((seconds, flags))

    def connect(self) -> FakeDom:
        return self

    def domainListGetStats(self, doms, what, flags):  # noqa: N802
        assert what == libvirt.VIR_DOMAIN_STATS_DIRTYRATE
        self.pending -= 1
        status = 1 if self.pending >= 0 else 2
        return [(self, {"dirtyrate.calc_status": status, "dirtyrate.calc_period": 1,
                        "dirtyrate.megabytes_per_second": self.mib_s,
                        "dirtyrate.calc_mode": "page-sampling"})]


TCG = Capabilities((7, 2, 22), (9, 0, 0), "qemu")


def test_page_sampling_is_requested_and_polled_until_measured():
    dom, slept = FakeDom(), []
    rate = Guest(dom, "fog1").measure_dirty_rate(TCG, 1, sleep=slept.append,
                                                more_samples=False)
    assert dom.started == [(1, libvirt.VIR_DOMAIN_DIRTYRATE_MODE_PAGE_SAMPLING)]
    assert rate.mib_s == 12 and rate.mode == "page-sampling"
    assert slept[0] == 1 and len(slept) == 3  # the window, then two polls while measuring


@pytest.mark.parametrize("mode", ["dirty-bitmap", "dirty-ring"])
def test_bitmap_and_ring_are_never_asked_of_a_tcg_guest(mode):
    dom = FakeDom()
    with pytest.raises(OrchestratorError) as refused:
        Guest(dom, "fog1").measure_dirty_rate(TCG, 1, mode=mode, sleep=lambda _s: None)
    assert dom.started == []  # QEMU was never asked
    assert "\n" not in str(refused.value)


def test_a_calculation_that_never_finishes_is_an_error_not_a_hang():
    dom = FakeDom(pending=10**6)
    with pytest.raises(OrchestratorError, match="no result"):
        Guest(dom, "fog1").measure_dirty_rate(TCG, 1, sleep=lambda _s: None,
                                                more_samples=False)


class QmpGuest(Guest):
    """A guest whose QEMU monitor is scripted."""

    replies: list[str]
    sent: list[str]

    def _qmp(self, command: str) -> str:
        self.sent.append(command)
        return self.replies.pop(0)


def qmp_guest(replies: list[str]) -> QmpGuest:
    guest = QmpGuest(FakeDom(mib_s=99), "fog1")
    guest.replies, guest.sent = replies, []
    return guest


def test_more_samples_through_qemus_own_command():
    guest = qmp_guest(['{"return": {}}', '{"return": {"status": "measuring"}}',
                       '{"return": {"status": "measured", "dirty-rate": 7, "calc-time": 1, '
                       '"sample-pages": 4096, "mode": "page-sampling"}}'])
    rate = guest.measure_dirty_rate(TCG, 1, sleep=lambda _s: None, more_samples=True)
    assert (rate.mib_s, rate.sample_pages) == (7.0, 4096)
    import json
    sent = json.loads(guest.sent[0])
    assert sent == {"execute": "calc-dirty-rate", "arguments": {
        "calc-time": 1, "sample-pages": 4096, "mode": "page-sampling"}}
    assert guest.dom.started == []  # libvirt's own call was not needed


def test_a_qemu_refusing_sample_pages_falls_back_to_libvirts_call():
    guest = qmp_guest(['{"error": {"class": "GenericError", "desc": "unknown"}}'])
    rate = guest.measure_dirty_rate(TCG, 1, sleep=lambda _s: None, more_samples=True)
    assert rate.mib_s == 99 and guest.dom.started  # libvirt's page sampling


def test_calc_command_bounds():
    from orchestrator.fog.capabilities import calc_dirty_rate_command
    with pytest.raises(ValueError):
        calc_dirty_rate_command(1, 8192)


def test_libvirts_own_call_is_the_default():
    guest = qmp_guest([])
    assert guest.measure_dirty_rate(TCG, 1, sleep=lambda _s: None).mib_s == 99
    assert guest.sent == []
