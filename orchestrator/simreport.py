"""Files from simulation results: CSV tables, JSON and PNG plots.

The I/O edge of the trace simulator: `orchestrator.model` computes, this module writes.
Rows are flat dicts (one per scenario), so the CSV, the JSON and the plots all show the
same numbers. Plots use matplotlib's Agg backend (no display needed) and are meant to be
read at a glance: traffic in GB per day, rates in Mb/s, one colour per VM size.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)

from orchestrator.model.simulation import PAPER_FIG6B, LocationShares  # noqa: E402

Row = Mapping[str, Any]
STYLE = {"static": "-", "dynamic": "--", "oracle": ":", "replicas": "-.", "energy": (0, (5, 1))}


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    """One row per dict; columns in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, payload: Any) -> Path:
    path.write_text(json.dumps(jsonable(payload), indent=2, sort_keys=False) + "\n",
                    encoding="utf-8")
    return path


def jsonable(value: Any) -> Any:
    """Infinities and NaNs become null; numpy scalars plain numbers."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def plot_fig6a(path: Path, rows: Sequence[Row], title: str = "") -> Path:
    """Core traffic per day vs r_data, one line per policy and VM memory size."""
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    memories = sorted({int(r["memory_mb"]) for r in rows})
    colours = dict(zip(memories, plt.get_cmap("viridis")(
        [i / max(1, len(memories) - 1) * 0.85 for i in range(len(memories))]), strict=True))
    for policy in dict.fromkeys(str(r["policy"]) for r in rows):
        for memory in memories if policy != "static" else memories[:1]:
            pts = sorted((float(r["r_data_mbps"]), float(r["core_gb"])) for r in rows
                         if r["policy"] == policy and int(r["memory_mb"]) == memory)
            if not pts:
                continue
            label = "static (any M)" if policy == "static" else f"{policy}, M = {memory} MB"
            ax.plot(*zip(*pts, strict=True), linestyle=STYLE.get(policy, "-"), marker=".",
                    color="black" if policy == "static" else colours[memory], label=label)
    ax.set_xlabel("r_data per user (Mb/s)")
    ax.set_ylabel("core traffic per day (GB)")
    ax.set_title(title or "Fig. 6a: core traffic, static vs dynamic proxy placement")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return _save(fig, path)


def plot_fig6b(path: Path, shares: LocationShares) -> Path:
    """% of users spending ≥ f of the day at ≤ N locations, with the paper's points."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    n = list(range(1, shares.counts.shape[1] + 1))
    for fraction in shares.fractions:
        ys = [shares.percent(fraction, k) for k in n]
        line, = ax.plot(n, ys, marker="o", label=f"≥ {fraction:.0%} of the day (simulated)")
        if fraction in PAPER_FIG6B:
            ax.scatter([4], [PAPER_FIG6B[fraction]], marker="x", s=80, color=line.get_color(),
                       zorder=3, label=f"paper, {fraction:.0%}: {PAPER_FIG6B[fraction]}%")
    ax.axvline(4, color="grey", alpha=0.3)
    ax.set_xlabel("number of locations (BSs), N")
    ax.set_ylabel("% of users at ≤ N locations")
    ax.set_title(f"Fig. 6b: where users spend their day ({shares.users:,} users)")
    ax.set_ylim(0, 101)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_sweep(path: Path, rows: Sequence[Row], x: str, y: str, group: str, title: str,
               xlabel: str, ylabel: str, log_x: bool = False, log_y: bool = False) -> Path:
    """One line per value of `group`: e.g. core traffic vs replica count, per placement."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for g in dict.fromkeys(str(r[group]) for r in rows):
        pts = sorted((float(r[x]), float(r[y])) for r in rows if str(r[group]) == g)
        ax.plot(*zip(*pts, strict=True), marker="o", label=f"{group} = {g}")
    if log_x:  # symlog keeps x = 0; linear only below the smallest positive value
        positive = [float(r[x]) for r in rows if float(r[x]) > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


RUN_PANELS = (("core_gb", "core traffic per day (GB)", 1.0),
              ("migrations", "migrations per day", 1.0),
              ("remote_fraction", "device time served remotely (%)", 100.0),
              ("energy_kj", "energy per day (kJ)", 1.0))


def plot_run(path: Path, rows: Sequence[Row], title: str) -> Path:
    """One operating point: a bar per policy for traffic, migrations, E2E proxy, energy."""
    fig, axes = plt.subplots(1, len(RUN_PANELS), figsize=(12, 3.8), dpi=120)
    policies = [str(r["policy"]) for r in rows]
    colours = plt.get_cmap("tab10")(range(len(policies)))
    for ax, (key, label, scale) in zip(axes, RUN_PANELS, strict=True):
        values = [float(r[key]) * scale for r in rows]
        bars = ax.bar(policies, values, color=colours)
        ax.bar_label(bars, labels=[f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
                                   for v in values], fontsize=7)
        ax.set_title(label, fontsize=9)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        ax.margins(y=0.15)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
