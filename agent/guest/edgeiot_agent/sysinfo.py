"""Readers for the few /proc facts the agent reports (paths injectable for host-side tests).

Why separate: the boot id proves identity across migrations, uptime and meminfo give the
host the guest's view of time and memory footprint (the pre-copy predictor needs the latter).
"""

from __future__ import annotations

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"
UPTIME_PATH = "/proc/uptime"
MEMINFO_PATH = "/proc/meminfo"
SELF_STATUS_PATH = "/proc/self/status"


def read_boot_id(path: str = BOOT_ID_PATH) -> str:
    with open(path, encoding="ascii") as f:
        return f.read().strip()


def read_uptime(path: str = UPTIME_PATH) -> float:
    with open(path, encoding="ascii") as f:
        return float(f.read().split()[0])


def parse_kib_table(text: str) -> dict[str, int]:
    """Parse `Key:   123 kB` lines (meminfo, /proc/self/status) into {key: KiB}."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        fields = rest.split()
        if sep and len(fields) == 2 and fields[1] == "kB" and fields[0].isdigit():
            out[key.strip()] = int(fields[0])
    return out


def read_memory(
    meminfo_path: str = MEMINFO_PATH, self_path: str = SELF_STATUS_PATH
) -> dict[str, int]:
    """Guest memory in KiB: total, available, used (total - available) and the agent's RSS."""
    with open(meminfo_path, encoding="ascii") as f:
        mem = parse_kib_table(f.read())
    try:
        with open(self_path, encoding="ascii") as f:
            rss = parse_kib_table(f.read()).get("VmRSS", 0)
    except OSError:
        rss = 0
    total = mem.get("MemTotal", 0)
    available = mem.get("MemAvailable", mem.get("MemFree", 0))
    return {
        "total_kib": total,
        "available_kib": available,
        "used_kib": max(total - available, 0),
        "agent_rss_kib": rss,
    }
