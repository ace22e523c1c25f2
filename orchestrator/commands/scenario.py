"""`orchestrator scenario run TRACE.csv`: replay a mobility trace on the lab, per policy.

Prints the policy comparison (measured core bytes beside the simulator's prediction,
decompositions and compositions, records delivered exactly once) and the decisions taken
where; writes result.json and core_bytes.png (matplotlib, Agg) under --out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import click
import numpy as np

from orchestrator import calibration_store
from orchestrator.commands._common import app, json_option, print_json, print_table
from orchestrator.commands._numbers import Finite, count
from orchestrator.edge import scenario as sc
from orchestrator.errors import UserError
from orchestrator.fleet import default_lab_prefix, lab_fleet
from orchestrator.fog.session import FleetSession
from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import DEVICE_LINK
from orchestrator.model.controller import TmigCache
from orchestrator.model.traces import TraceError
from orchestrator.store import open_store


@click.group("scenario")
def command() -> None:
    """Live replays of mobility traces on the lab-in-a-box."""


@command.command("run")
@click.argument("trace", type=click.Path(exists=True, dir_okay=False))
@click.option("--policy", "policies", multiple=True, type=click.Choice(sc.POLICIES),
              help="Policy to replay (repeatable; default: all three).")
@click.option("--speedup", type=Finite(min=0.1, max=600), default=20.0,
              show_default=True, help="Trace minutes per wall minute.")
@click.option("--r-data", "r_data_mb", type=Finite(min=0.01, max=50), default=3.0,
              show_default=True, help="Each user's stream, MB/s (wall).")
@click.option("--replicas", type=count(1, 16), default=4, show_default=True)
@click.option("--static-mib", type=count(1, 512), default=32,
              show_default=True, help="Size of each proxy's static part (its disk).")
@click.option("--decompose/--no-decompose", default=True, show_default=True,
              help="Let Eq. 1 decompose a proxy when a user's car leaves home.")
@click.option("--roaming-user", "roaming", multiple=True, metavar="USER",
              help="A user (u<id>) without a home device: the proxy migrates whole "
                   "(repeatable).")
@click.option("--device-hz", type=Finite(min=0.5, max=50), default=5.0,
              show_default=True, help="Records per second of each emulated device.")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Directory for result.json and core_bytes.png (default: state dir).")
@json_option
@click.pass_context
def run(ctx: click.Context, trace: str, policies: tuple[str, ...], speedup: float,
        r_data_mb: float, replicas: int, static_mib: int, decompose: bool,
        roaming: tuple[str, ...], device_hz: float, out: str | None, as_json: bool) -> None:
    """Replay TRACE (CSV user,minute,bs_id) with real proxy VMs, devices and migrations."""
    state = app(ctx).state_path
    try:
        parsed = sc.parse_small_trace(Path(trace).read_text().splitlines())
    except (TraceError, OSError) as exc:
        raise UserError(f"{trace}: {exc}") from None
    unknown = sorted(set(roaming) - set(parsed.users))
    if unknown:
        raise UserError(f"--roaming-user {', '.join(unknown)}: not in the trace "
                        f"({', '.join(parsed.users)})")
    cfg = sc.ReplayConfig(speedup=speedup, r_data_bps=r_data_mb * 1e6, replicas=replicas,
                          static_part_bytes=static_mib << 20, decompose=decompose,
                          roaming_users=tuple(roaming), device_hz=device_hz)
    result = replay(state, parsed, list(policies or sc.POLICIES), cfg)
    out_dir = Path(out) if out else state / "scenario"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "result.json").write_text(json.dumps(result, indent=2, default=str))
    plot(result, out_dir / "core_bytes.png")
    if as_json:
        print_json(result)
        return
    rows = [(p["policy"], _mb(p["core_bytes"]), _mb(result["simulated"][p["policy"]]["core_bytes"]),
             p["migrations"], p["incremental_migrations"], _mb(p["migration_bytes"]),
             f"{p['decompositions']}/{p['compositions']}",
             f"{p['records']['exactly_once']}/{p['records']['devices']}",
             p["records"]["records"]) for p in result["policies"]]
    print_table(f"core traffic, {trace}", ["policy", "core MB", "simulated MB", "migrations",
                                           "incremental", "migration MB", "decomp/comp",
                                           "exactly once", "records"], rows)
    print_table("decisions", ["policy", "minute", "user", "verdict", "node", "Tmig s",
                              "threshold s", "status"], decision_rows(result["policies"]))
    click.echo(f"wrote {out_dir / 'result.json'} and {out_dir / 'core_bytes.png'}")


def replay(state: Path, trace: sc.Trace, policies: list[str],
           cfg: sc.ReplayConfig) -> dict[str, Any]:
    lab = Lab.recorded(state, default_lab_prefix())
    record = lab.require_up()
    calibration = calibration_store.load(state)
    records = open_store(state)
    with FleetSession(lab_fleet(state)) as session:
        nodes = sorted(session.fleet.nodes)
        cfg = sc.metered_config(cfg, session.fleet.nodes.values())
        # Devices and their bulk streams sit in each node's devices namespace, behind its
        # VM bridge: like any device, they pass the node's guard only as far as the VMs.
        hooks = sc.LabHooks(core_bytes=lab.core_counters, enter=lab.devices_enter_argv,
                            netns=lab.devices_netns, subnet=record["spec"]["subnet"],
                            bridge=DEVICE_LINK, core_classes=lab.core_classes)
        try:
            recorded = {b["bs_id"]: b["node"] for b in records.base_stations()}
            bs_map = sc.default_bs_map({b for row in trace.bs for b in row}, nodes, recorded)
            for node in sorted(set(bs_map.values())):
                lab.devices_netns(node)  # a BS on a node without devices (the cloud): refused
            runner = sc.Replay(session, records, state, hooks, trace, bs_map, cfg, calibration)
            results = [runner.run(p) for p in policies]
        finally:
            records.close()
    tmig = TmigCache(calibration)
    t_full = tmig.t_mig_s(cfg.memory_mib << 20, cfg.r_mig_bps, extra_bytes=cfg.static_part_bytes)
    t_rep = tmig.t_mig_s(cfg.memory_mib << 20, cfg.r_mig_bps, extra_bytes=cfg.overlay_bytes)
    t_part = tmig.t_mig_s(cfg.memory_mib << 20, cfg.r_mig_bps)  # a mobile part: no disk
    places = sc.node_minutes(trace, bs_map, nodes)
    parted = np.array([cfg.decompose and u not in cfg.roaming_users for u in trace.users])
    return {"config": sc.config_dict(cfg), "bs_map": bs_map, "users": list(trace.users),
            "minutes": trace.n_minutes, "t_mig_s": t_full, "t_mig_replica_s": t_rep,
            "t_mig_part_s": t_part, "policies": results,
            "simulated": sc.simulate(places, len(nodes), cfg, t_full, t_rep, t_part, parted)}


def decision_rows(policies: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Rule decisions and what they did (first sightings left out)."""
    return [(p["policy"], a["minute"], a["user"], a["verdict"], a["node"],
             _round(a.get("t_mig_s")), _round(a.get("threshold_s")), a["status"])
            for p in policies for a in p["actions"] if a["verdict"] != "place"]


def _round(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [p["policy"] for p in result["policies"]]
    measured = [p["core_bytes"] / 1e6 for p in result["policies"]]
    simulated = [result["simulated"][n]["core_bytes"] / 1e6 for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    xs = range(len(names))
    ax.bar([x - 0.2 for x in xs], measured, 0.4, label="measured (core veths)")
    ax.bar([x + 0.2 for x in xs], simulated, 0.4, label="simulator")
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("core traffic (MB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mb(value: float) -> str:
    return f"{value / 1e6:.1f}"

