"""What the QEMU/libvirt on a fog node can do for migration, detected, never assumed.

Why: the lab runs Debian 12's QEMU 7.2 / libvirt 9.0 and may run bookworm-backports' QEMU
10.0 / libvirt 11.3; real hosts run anything. Features that matter to the predictor and
to convergence policies differ between them, and some need KVM, which the lab's hosts
cannot boot. Everything here is pure: it reads the domain-capabilities XML
(`virConnect.getDomainCapabilities`) and the version numbers libvirt reports
(`getVersion`, `getLibVersion`: major × 1,000,000 + minor × 1,000 + micro), and decides.

Facts behind the rules (LAB-NOTES, 2026-12-08; QEMU and libvirt release notes):
  * page-sampling dirty-rate calculation (`calc-dirty-rate`, libvirt's
    `virDomainStartDirtyRateCalc`): QEMU ≥ 5.2, libvirt ≥ 7.2; works under TCG on 7.2 and
    10.0, counts distinct pages over its window, in whole MiB/s;
  * dirty-bitmap mode: never under TCG (on 7.2 it killed the guest's QEMU, on 10.0 it
    reads 0);
  * dirty-ring mode and the dirty-limit convergence policy (QEMU ≥ 8.1, libvirt ≥ 10.0's
    VIR_MIGRATE_DIRTY_LIMIT) need KVM's dirty ring: a `kvm` domain with
    `<features><kvm><dirty-ring state='on'/></kvm></features>`;
  * QEMU < 9.0 loses dirty pages under TCG (docs/tcg-migration-corruption.md): migrations
    of a TCG guest need the project's `pti=on` workaround there.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from typing import Any

PAGE_SAMPLING = "page-sampling"
DIRTY_BITMAP = "dirty-bitmap"
DIRTY_RING = "dirty-ring"
DIRTY_RATE_MODES = (PAGE_SAMPLING, DIRTY_BITMAP, DIRTY_RING)

MIN_QEMU_DIRTY_RATE = (5, 2)
MIN_LIBVIRT_DIRTY_RATE = (7, 2)
MIN_QEMU_DIRTY_LIMIT = (8, 1)
MIN_LIBVIRT_DIRTY_LIMIT = (10, 0)
QEMU_TCG_DIRTY_FIX = (9, 0)  # physmem: dirty bitmap coherency with TCG (03bfc2188f)

CONVERGENCE_POLICIES = ("abort", "auto-converge", "postcopy", "dirty-limit")


def split_version(number: int) -> tuple[int, int, int]:
    """libvirt's encoded version (7002022) as (7, 2, 22)."""
    if number < 0:
        raise ValueError(f"version number must be >= 0, got {number}")
    return number // 1_000_000, number // 1_000 % 1_000, number % 1_000


def version_text(version: tuple[int, int, int]) -> str:
    return ".".join(map(str, version))


def parse_version_text(text: str) -> tuple[int, int, int]:
    """'10.0.2' → (10, 0, 2); the inverse of `version_text` (missing parts are 0)."""
    match = re.fullmatch(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", text.strip())
    if not match:
        raise ValueError(f"not a version: {text!r}")
    major, minor, micro = (int(g or 0) for g in match.groups())
    return major, minor, micro


@dataclass(frozen=True)
class DomainCaps:
    """The parts of a domain-capabilities document the migration code needs."""

    virt_type: str  # qemu (TCG) or kvm
    emulator: str
    machine: str  # the default machine type, e.g. pc-i440fx-7.2
    machine_version: tuple[int, int] | None  # QEMU's major.minor, read off the machine name


def parse_domain_caps(xml: str) -> DomainCaps:
    """Parse `getDomainCapabilities` output; ValueError on anything else."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise ValueError(f"domain capabilities are not XML: {exc}") from None
    if root.tag != "domainCapabilities":
        raise ValueError(f"not a domainCapabilities document (root <{root.tag}>)")
    machine = (root.findtext("machine") or "").strip()
    found = re.search(r"-(\d+)\.(\d+)$", machine)
    return DomainCaps(virt_type=(root.findtext("domain") or "").strip(),
                      emulator=(root.findtext("path") or "").strip(), machine=machine,
                      machine_version=(int(found[1]), int(found[2])) if found else None)


@dataclass(frozen=True)
class Capabilities:
    """One node's migration-relevant abilities, and why each missing one is missing."""

    qemu_version: tuple[int, int, int]
    libvirt_version: tuple[int, int, int]
    virt_type: str
    dirty_ring_enabled: bool = False  # the domain was defined with KVM's dirty ring on

    @property
    def kvm(self) -> bool:
        return self.virt_type == "kvm"

    @property
    def qemu(self) -> str:
        return version_text(self.qemu_version)

    def dirty_rate_refusal(self, mode: str) -> str | None:
        """None if the hypervisor may measure the dirty rate in `mode`, else why not."""
        if mode not in DIRTY_RATE_MODES:
            return f"unknown dirty-rate mode {mode!r} ({', '.join(DIRTY_RATE_MODES)})"
        if self.qemu_version[:2] < MIN_QEMU_DIRTY_RATE:
            return f"QEMU {self.qemu} has no dirty-rate calculation (needs 5.2)"
        if self.libvirt_version[:2] < MIN_LIBVIRT_DIRTY_RATE:
            return (f"libvirt {version_text(self.libvirt_version)} has no dirty-rate "
                    f"calculation (needs 7.2)")
        if mode == DIRTY_BITMAP and not self.kvm:
            return ("dirty-bitmap mode is refused under TCG: it killed QEMU 7.2's guest and "
                    "reads 0 on QEMU 10")
        if mode == DIRTY_RING and not (self.kvm and self.dirty_ring_enabled):
            return "dirty-ring mode needs KVM with the dirty ring on; this domain runs " + (
                "under TCG" if not self.kvm else "without the dirty ring")
        return None

    def policy_refusal(self, policy: str) -> str | None:
        """None if the convergence policy is available here, else a one-line reason."""
        if policy not in CONVERGENCE_POLICIES:
            return f"unknown convergence policy {policy!r} ({', '.join(CONVERGENCE_POLICIES)})"
        if policy != "dirty-limit":
            return None
        if not self.kvm:
            return "dirty-limit needs KVM's dirty ring; this node runs guests under TCG"
        if self.qemu_version[:2] < MIN_QEMU_DIRTY_LIMIT:
            return f"dirty-limit needs QEMU 8.1 or later, this node has {self.qemu}"
        if self.libvirt_version[:2] < MIN_LIBVIRT_DIRTY_LIMIT:
            return (f"dirty-limit needs libvirt 10.0 or later, this node has "
                    f"{version_text(self.libvirt_version)}")
        if not self.dirty_ring_enabled:
            return "dirty-limit needs the domain defined with <kvm><dirty-ring state='on'/>"
        return None

    @property
    def policies(self) -> tuple[str, ...]:
        return tuple(p for p in CONVERGENCE_POLICIES if self.policy_refusal(p) is None)

    @property
    def tcg_loses_dirty_pages(self) -> bool:
        """QEMU < 9.0 under TCG: the guest needs `pti=on` for correct dirty tracking."""
        return not self.kvm and self.qemu_version[:2] < QEMU_TCG_DIRTY_FIX

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(qemu_version=self.qemu, libvirt_version=version_text(self.libvirt_version),
                    policies=list(self.policies), tcg_loses_dirty_pages=self.tcg_loses_dirty_pages,
                    dirty_rate_modes=[m for m in DIRTY_RATE_MODES
                                      if self.dirty_rate_refusal(m) is None])
        return data


def detect(domain_caps_xml: str, qemu_version: int, libvirt_version: int,
           domain_xml: str | None = None) -> Capabilities:
    """Capabilities from what libvirt reports; `domain_xml` tells whether a given domain has
    KVM's dirty ring on. A version of 0 (a driver that reports none) falls back to the
    version in the default machine type's name."""
    caps = parse_domain_caps(domain_caps_xml)
    qemu = split_version(qemu_version)
    if qemu == (0, 0, 0) and caps.machine_version:
        qemu = (*caps.machine_version, 0)
    return Capabilities(qemu_version=qemu, libvirt_version=split_version(libvirt_version),
                        virt_type=caps.virt_type,
                        dirty_ring_enabled=bool(domain_xml) and _dirty_ring_on(domain_xml or ""))


def _dirty_ring_on(domain_xml: str) -> bool:
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return False
    ring = root.find("./features/kvm/dirty-ring")
    return ring is not None and ring.get("state") == "on"


# --------------------------------------------------------------------------- dirty rate

CALC_MEASURING = 1  # VIR_DOMAIN_DIRTYRATE_MEASURING
CALC_MEASURED = 2  # VIR_DOMAIN_DIRTYRATE_MEASURED


@dataclass(frozen=True)
class DirtyRate:
    """A hypervisor dirty-rate measurement: distinct pages written over `window_s`.

    NOTE: QEMU reports whole MiB/s (its "MB" is 2^20 bytes), and page sampling hashes 512
    sampled pages per GiB at the start and end of the window: a page written twice counts
    once, so over a working set the writer cycles through within the window it reads the
    set's size ÷ window, not the write rate (LAB-NOTES: 8,000 pages/s over 8 MiB read 4-6).
    """

    mib_s: float
    window_s: float
    mode: str
    sample_pages: int = 512  # per GiB of guest memory (QEMU's default through libvirt)

    def pages_s(self, page_size: int = 4096) -> float:
        return self.mib_s * 2**20 / page_size

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_dirty_rate(stats: dict[str, Any]) -> DirtyRate | None:
    """The `dirtyrate.*` fields of `domainListGetStats(…, VIR_DOMAIN_STATS_DIRTYRATE)`;
    None until the calculation has finished."""
    if int(stats.get("dirtyrate.calc_status", 0)) != CALC_MEASURED:
        return None
    rate = stats.get("dirtyrate.megabytes_per_second")
    if rate is None:
        return None
    return DirtyRate(mib_s=float(rate), window_s=float(stats.get("dirtyrate.calc_period", 0)),
                     mode=str(stats.get("dirtyrate.calc_mode", PAGE_SAMPLING)))


# NOTE: libvirt's virDomainStartDirtyRateCalc has no sample-count argument, and QEMU's
# default of 512 sampled pages per GiB leaves a 128-256 MiB guest 64-128 of them: one page
# is 2 MiB/s of reading, and a 4 MiB working set on a 128 MiB guest read 0 (quick campaign,
# 2026-12-08). QEMU's own calc-dirty-rate takes sample-pages up to 4096 per GiB.
MAX_SAMPLE_PAGES_PER_GIB = 4096


def calc_dirty_rate_command(window_s: int, sample_pages: int = MAX_SAMPLE_PAGES_PER_GIB) -> str:
    """The QMP command starting a page-sampling calculation with more samples."""
    if not 1 <= window_s <= 60 or not 128 <= sample_pages <= MAX_SAMPLE_PAGES_PER_GIB:
        raise ValueError("window must be 1-60 s and sample pages 128-4096 per GiB")
    return json.dumps({"execute": "calc-dirty-rate",
                       "arguments": {"calc-time": window_s, "sample-pages": sample_pages,
                                     "mode": PAGE_SAMPLING}})


QUERY_DIRTY_RATE = json.dumps({"execute": "query-dirty-rate"})


def parse_query_dirty_rate(reply: str) -> DirtyRate | None:
    """QMP `query-dirty-rate`'s answer; None until measured (or on an error reply)."""
    try:
        data = json.loads(reply).get("return") or {}
    except (ValueError, AttributeError):
        return None
    if data.get("status") != "measured" or "dirty-rate" not in data:
        return None
    return DirtyRate(mib_s=float(data["dirty-rate"]), window_s=float(data.get("calc-time", 0)),
                     mode=str(data.get("mode", PAGE_SAMPLING)),
                     sample_pages=int(data.get("sample-pages", 0)))
