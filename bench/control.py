"""Benchmark of the control plane; prints JSON.

    .venv/bin/python bench/control.py                          # decision latency/throughput
    .venv/bin/python bench/control.py --live TRACE.csv         # … and a live replay (lab up)
    .venv/bin/python bench/control.py --from-result result.json  # … or a replay's result

Decision loop: location updates (random walks of 10,000 users over 200 BSs served by 20
fog nodes, 30 % of updates change BS) go through the MME and the decision engine with the
calibrated pre-copy predictor in the loop (memoised per memory size and bandwidth) and the
dwell estimator (fitted on a synthetic history, memoised per user, place and hour).
Latency per update (MME + engine) is measured with perf_counter_ns; targets (issue 5):
≥ 50,000 updates/s and p99 ≤ 1 ms.

Live part: core bytes per policy measured on the lab's core links, with the trace
simulator's prediction for the same trace beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from orchestrator.model import dwell  # noqa: E402
from orchestrator.model.controller import (  # noqa: E402
    Controller,
    ControlParams,
    ModelDwell,
    TmigCache,
)
from orchestrator.model.mme import LocationUpdate, Mme  # noqa: E402


def build(n_users: int, n_bs: int, n_nodes: int, policy: str, seed: int) -> Controller:
    rng = np.random.default_rng(seed)
    nodes = [f"fog{i}" for i in range(n_nodes)]
    mme = Mme.from_maps({f"bs{b}": nodes[b % n_nodes] for b in range(n_bs)},
                        {f"d{u}": f"user{u}" for u in range(n_users)})
    history = dwell.visits_from_minutes(synthetic_day(rng, n_users, n_nodes))
    model = dwell.fit(history, n_nodes)
    est = ModelDwell(model, {f"user{u}": u for u in range(n_users)},
                     {n: i for i, n in enumerate(nodes)}, minute_s=60.0)
    est.warm(f"user{u}" for u in range(n_users))  # precomputed at registration
    params = ControlParams(policy=policy, r_data_bps=5e4, r_mig_bps=20 * 2**20)
    return Controller(params, TmigCache(), est, mme, clock=time.monotonic)


def synthetic_day(rng: np.random.Generator, n_users: int, n_nodes: int) -> np.ndarray:
    """A day of history: stays at random nodes lasting ~Exp(45 min) each."""
    out = np.empty((n_users, 1440), dtype=np.int64)
    for u in range(n_users):
        lengths = (rng.exponential(45.0, 200) + 1).astype(np.int64)
        places = rng.integers(0, n_nodes, len(lengths))
        out[u] = np.repeat(places, lengths)[:1440]
    return out


def updates(n: int, n_users: int, n_bs: int, seed: int) -> list[LocationUpdate]:
    rnd = random.Random(seed)
    where = [rnd.randrange(n_bs) for _ in range(n_users)]
    out = [LocationUpdate(f"d{u}", f"bs{where[u]}", 0.0) for u in range(n_users)]
    for i in range(n):
        u = rnd.randrange(n_users)
        if rnd.random() < 0.3:
            where[u] = (where[u] + rnd.choice((-1, 1, 7))) % n_bs
        out.append(LocationUpdate(f"d{u}", f"bs{where[u]}", 1.0 + i * 0.01))
    return out


def decision_loop(n: int, n_users: int, n_bs: int, n_nodes: int, policy: str,
                  seed: int = 1) -> dict[str, Any]:
    ctl = build(n_users, n_bs, n_nodes, policy, seed)
    stream = updates(n, n_users, n_bs, seed)
    warm, measured = stream[:n_users], stream[n_users:]
    for upd in warm:  # first sightings: placements
        ctl.on_roams(ctl.mme.update(upd))
    lat = np.empty(len(measured), dtype=np.int64)
    verdicts: dict[str, int] = {}
    clock = time.perf_counter_ns
    t0 = time.perf_counter()
    for i, upd in enumerate(measured):
        start = clock()
        actions = ctl.on_roams(ctl.mme.update(upd))
        lat[i] = clock() - start
        for a in actions:
            verdicts[a.kind] = verdicts.get(a.kind, 0) + 1
    total = time.perf_counter() - t0
    return {"policy": policy, "updates": len(measured), "users": n_users, "bs": n_bs,
            "nodes": n_nodes, "updates_per_s": round(len(measured) / total),
            "latency_us": {"p50": round(float(np.percentile(lat, 50)) / 1e3, 2),
                           "p99": round(float(np.percentile(lat, 99)) / 1e3, 2),
                           "max": round(float(lat.max()) / 1e3, 2)},
            "verdicts": verdicts, "tmig_cache_entries": len(ctl.tmig._cache)}


def live(trace: str, speedup: float, r_data_mb: float) -> dict[str, Any]:
    from orchestrator.commands.scenario import replay
    from orchestrator.edge import scenario as sc
    state = Path(os.environ.get("EDGEIOT_STATE_DIR", "/var/lib/edgeiot"))
    parsed = sc.parse_small_trace(Path(trace).read_text().splitlines())
    return replay(state, parsed, list(sc.POLICIES),
                  sc.ReplayConfig(speedup=speedup, r_data_bps=r_data_mb * 1e6))


def replay_summary(result: dict[str, Any]) -> dict[str, Any]:
    return {p["policy"]: {"measured_core_bytes": p["core_bytes"],
                          "simulated_core_bytes": round(result["simulated"][p["policy"]]
                                                        ["core_bytes"]),
                          "migrations": p["migrations"],
                          "migration_bytes": p["migration_bytes"],
                          "incremental_migrations": p["incremental_migrations"]}
            for p in result["policies"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--updates", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--live", default=None, help="Replay this trace on the running lab.")
    ap.add_argument("--from-result", default=None, help="A scenario result.json to include.")
    ap.add_argument("--speedup", type=float, default=20.0)
    ap.add_argument("--r-data", type=float, default=7.0, help="MB/s per user (live).")
    args = ap.parse_args()
    out: dict[str, Any] = {"decision_loop": [
        decision_loop(args.updates, args.users, 200, 20, p)
        for p in ("dynamic", "dynamic+replicas", "static")]}
    out["targets"] = {"updates_per_s": 50_000, "p99_us": 1000}
    out["meets_targets"] = all(r["updates_per_s"] >= 50_000 and r["latency_us"]["p99"] <= 1000
                               for r in out["decision_loop"])
    result = None
    if args.live:
        result = live(args.live, args.speedup, args.r_data)
    elif args.from_result:
        result = json.loads(Path(args.from_result).read_text())
    if result is not None:
        out["replay"] = {"config": result["config"], "t_mig_s": result["t_mig_s"],
                         "t_mig_replica_s": result["t_mig_replica_s"],
                         "policies": replay_summary(result)}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
