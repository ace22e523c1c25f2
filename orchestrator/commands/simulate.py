"""`orchestrator simulate`: the trace-driven simulator (Fig. 6 of the paper, and beyond).

Thin on purpose: options are parsed here, traces come from `model.mobility` (synthetic)
or `model.traces` (CSV), the numbers from `model.simulation`, the files from `simreport`.
Users are processed chunk by chunk (generate or read → visits → dwell estimate → every
scenario), so memory stays bounded whatever --users is.

Synthetic traces are two days of the same users: day 0 is the history the T_BS
estimator and the replica placement learn from, day 1 is simulated. An imported trace of
several whole days uses its last day the same way; a one-day trace only gets the
population-level estimator, fitted on itself (optimistic, said in the output).

Tmig comes from the pre-copy predictor (`model.precopy`), once per VM memory size, with
the built-in calibration or a stored one (--calibration), and the calibration's footprint
model or a given share of non-zero memory (--footprint-share 1: every page has data, the
paper's M/r_mig).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import click
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from orchestrator import calibration_store, simreport
from orchestrator.commands._numbers import Finite, count
from orchestrator.errors import UserError
from orchestrator.model import dwell, mobility, simulation, traces
from orchestrator.model.precopy import Calibration, MigrationInputs, predict

MIB = 2**20
DEFAULT_R_DATA = "0.01,0.02,0.05,0.1,0.2,0.3,0.5,0.75,1,1.5"


# ----------------------------------------------------------------------------- inputs


class NumberList(click.ParamType):  # type: ignore[type-arg]  # generic since click 8.2
    """A comma-separated list of non-negative numbers: `256,512,1024`."""

    name = "LIST"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> list[float]:
        if isinstance(value, list):
            return value
        try:
            out = [float(v) for v in str(value).split(",") if v.strip()]
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of numbers", param, ctx)
        if not out or any(v < 0 or not np.isfinite(v) for v in out):
            self.fail(f"{value!r} must list finite numbers >= 0", param, ctx)
        return out


LIST = NumberList()


@dataclass(frozen=True)
class SourceOpts:
    users: int
    seed: int
    n_bs: int
    fog_nodes: int | None
    chunk_users: int
    trace: str | None
    layout: str | None
    minutes: int


@dataclass(frozen=True)
class ModelOpts:
    r_mig_bps: float
    epsilon_bytes: float
    dirty_pages_s: float
    downtime_s: float
    replicas: int
    replica_delta: float
    placement: str
    energy: simulation.EnergyModel
    footprint_share: float | None
    calibration: Calibration


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options every simulation command shares: where users come from, model, output."""
    opts = [
        click.option("--users", type=count(1, 10_000_000), default=13_000, show_default=True,
                     help="Synthetic users (ignored with --trace)."),
        click.option("--seed", type=count(0, 2**32 - 1), default=0, show_default=True),
        click.option("--bs", "n_bs", type=count(1, 10_000_000), default=5962, show_default=True,
                     help="Base stations of the synthetic layout."),
        click.option("--fog-nodes", type=count(1, 10_000_000), default=None,
                     help="Fog nodes (k-means over BSs); default one per BS."),
        click.option("--chunk-users", type=count(1, 10_000_000), default=8192, show_default=True),
        click.option("--trace", type=click.Path(dir_okay=False), default=None,
                     help="CSV trace user,minute,bs_id instead of a synthetic one."),
        click.option("--layout", type=click.Path(dir_okay=False), default=None,
                     help="CSV layout bs_id,x_m,y_m,fog_id (default: synthetic)."),
        click.option("--minutes", type=count(1, 100_000), default=mobility.MINUTES_PER_DAY,
                     show_default=True, help="Minutes per user in --trace."),
        click.option("--r-mig-mbps", type=Finite(min=0, min_open=True), default=20.0,
                     show_default=True, help="Migration bandwidth r_mig."),
        click.option("--epsilon-kb", type=Finite(0), default=500.0, show_default=True,
                     help="Fixed migration overhead ς in kilobits."),
        click.option("--dirty-pages-s", type=Finite(0), default=100.0,
                     show_default=True, help="Guest dirty rate for the Tmig predictor."),
        click.option("--downtime-s", type=Finite(min=0, min_open=True), default=0.3,
                     show_default=True),
        click.option("--replicas", type=count(0, 1000), default=2, show_default=True,
                     help="k of the replicas policy."),
        click.option("--replica-delta", type=Finite(0, 1), default=0.25,
                     show_default=True, help="Share of memory still to move onto a replica."),
        click.option("--placement", type=click.Choice(simulation.PLACEMENTS), default="time",
                     show_default=True),
        click.option("--footprint-share", type=Finite(0, 1), default=None,
                     help="Non-zero share of VM memory for Tmig [default: calibration's "
                     "model]; 1 is the paper's M/r_mig."),
        click.option("--calibration", "calibration_file", type=click.Path(dir_okay=False),
                     default=None, help="Calibration JSON for Tmig [default: built-in]."),
        click.option("--core-j-per-mb", type=Finite(0), default=1.0,
                     show_default=True, help="Energy: core transport per MB."),
        click.option("--host-j-per-mb", type=Finite(0), default=0.5,
                     show_default=True, help="Energy: hosts per migrated MB."),
        click.option("--host-j-per-migration", type=Finite(0), default=20.0,
                     show_default=True, help="Energy: fixed cost of one migration."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False), default="sim-out",
                     show_default=True, help="Directory for CSV, JSON and PNG files."),
        click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _split(kw: dict[str, Any]) -> tuple[SourceOpts, ModelOpts, Path, bool]:
    src = SourceOpts(kw.pop("users"), kw.pop("seed"), kw.pop("n_bs"), kw.pop("fog_nodes"),
                     kw.pop("chunk_users"), kw.pop("trace"), kw.pop("layout"), kw.pop("minutes"))
    energy = simulation.EnergyModel(kw.pop("core_j_per_mb") / 1e6, kw.pop("host_j_per_mb") / 1e6,
                                    kw.pop("host_j_per_migration"))
    if energy.core_j_per_byte <= 0:
        raise UserError("--core-j-per-mb must be > 0 (the energy rule divides by it)")
    calibration_file = kw.pop("calibration_file")
    calibration = (calibration_store.read(calibration_file) if calibration_file
                   else Calibration())
    model = ModelOpts(kw.pop("r_mig_mbps") * simulation.MBIT, kw.pop("epsilon_kb") * 1e3 / 8,
                      kw.pop("dirty_pages_s"), kw.pop("downtime_s"), kw.pop("replicas"),
                      kw.pop("replica_delta"), kw.pop("placement"), energy,
                      kw.pop("footprint_share"), calibration)
    if src.fog_nodes is not None and src.fog_nodes > src.n_bs:
        raise UserError(f"--fog-nodes {src.fog_nodes} exceeds --bs {src.n_bs}")
    out = Path(kw.pop("out_dir"))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create --out {out}: {exc.strerror}") from None
    return src, model, out, bool(kw.pop("as_json"))


# ----------------------------------------------------------------------------- pipeline


def _predicted_t_mig(memory_bytes: float, m: ModelOpts) -> float:
    """Tmig from the pre-copy predictor; infinite when the migration would not converge."""
    memory = max(1, int(memory_bytes))
    footprint = None if m.footprint_share is None else int(memory * m.footprint_share)
    p = predict(MigrationInputs(memory_bytes=memory, dirty_rate_pages_s=m.dirty_pages_s,
                                bandwidth_bytes_s=m.r_mig_bps, downtime_limit_s=m.downtime_s,
                                footprint_bytes=footprint), m.calibration)
    return p.total_time_s if p.converges else float("inf")


def _t_mig_model(m: ModelOpts) -> dict[str, Any]:
    return {"calibration": m.calibration.source, "footprint_share": m.footprint_share,
            "dirty_pages_s": m.dirty_pages_s, "downtime_s": m.downtime_s,
            "r_mig_mbps": m.r_mig_bps / simulation.MBIT}


def _layout(src: SourceOpts) -> mobility.Layout:
    if src.layout:
        try:
            return traces.read_layout(src.layout)
        except OSError as exc:
            raise UserError(f"cannot read --layout {src.layout}: {exc.strerror}") from None
        except traces.TraceError as exc:
            raise UserError(f"{src.layout}: {exc}") from None
    return mobility.make_layout(mobility.LayoutParams(n_bs=src.n_bs, n_fog=src.fog_nodes,
                                                      seed=src.seed))


@dataclass(frozen=True)
class Chunk:
    prepared: simulation.Prepared
    bs_visits: dwell.Visits  # the simulated day at BS level (for Fig. 6b)
    personal_history: bool


def _days(src: SourceOpts, layout: mobility.Layout
          ) -> Iterator[tuple[mobility.BsArray | None, mobility.BsArray]]:
    """(history, today) BS arrays per chunk of users."""
    if src.trace is None:
        for first in range(0, src.users, src.chunk_users):
            n = min(src.chunk_users, src.users - first)
            yield (mobility.generate_chunk(layout, n, seed=src.seed, day=0, first_user=first),
                   mobility.generate_chunk(layout, n, seed=src.seed, day=1, first_user=first))
        return
    day = mobility.MINUTES_PER_DAY
    try:
        for chunk in traces.read_trace(src.trace, layout.n_bs, src.minutes, src.chunk_users):
            if src.minutes >= 2 * day and src.minutes % day == 0:
                yield chunk.places[:, :-day], chunk.places[:, -day:]
            else:
                yield None, chunk.places
    except OSError as exc:
        raise UserError(f"cannot read --trace {src.trace}: {exc.strerror}") from None
    except traces.TraceError as exc:
        raise UserError(f"{src.trace}: {exc}") from None


def _chunks(src: SourceOpts, layout: mobility.Layout, max_replicas: int) -> Iterator[Chunk]:
    for history, today in _days(src, layout):
        bs_today = dwell.visits_from_minutes(today)
        fog_today = dwell.relabel(bs_today, layout.fog_of_bs)
        fog_hist = (dwell.relabel(dwell.visits_from_minutes(history), layout.fog_of_bs)
                    if history is not None else None)
        model = dwell.fit(fog_hist if fog_hist is not None else fog_today, layout.n_fog,
                          personal=fog_hist is not None)
        prep = simulation.prepare(fog_today, dwell.predict(model, fog_today), fog_hist,
                                  max_replicas)
        yield Chunk(prep, bs_today, fog_hist is not None)


def _n_chunks(src: SourceOpts) -> int | None:
    return None if src.trace else -(-src.users // src.chunk_users)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                    disable=quiet)


def _simulate(src: SourceOpts, layout: mobility.Layout, scenarios: Sequence[simulation.Scenario],
              quiet: bool, max_replicas: int
              ) -> tuple[list[simulation.Totals], simulation.LocationShares | None, bool]:
    """Run every scenario over all chunks, with a progress bar; also Fig. 6b shares."""
    totals = [simulation.Totals() for _ in scenarios]
    shares: simulation.LocationShares | None = None
    personal = True
    with _progress(quiet) as bar:
        task = bar.add_task("simulating users", total=_n_chunks(src))
        for chunk in _chunks(src, layout, max_replicas):
            part = simulation.run_many(chunk.prepared, scenarios)
            totals = [a + b for a, b in zip(totals, part, strict=True)]
            s = simulation.location_shares(chunk.bs_visits)
            shares = s if shares is None else shares + s
            personal = personal and chunk.personal_history
            bar.advance(task)
    return totals, shares, personal


def _base(m: ModelOpts, policy: str = "dynamic", r_data_bps: float = 0.0) -> simulation.Scenario:
    return simulation.Scenario(policy, r_data_bps, r_mig_bps=m.r_mig_bps,
                               epsilon_bytes=m.epsilon_bytes, replicas=m.replicas,
                               placement=m.placement, replica_delta=m.replica_delta,
                               energy=m.energy)


def _at(m: ModelOpts, memory_mb: float, r_data_mbps: float) -> simulation.Scenario:
    """The base scenario at one operating point: r_data, and Tmig predicted for M."""
    return replace(_base(m, r_data_bps=r_data_mbps * simulation.MBIT),
                   t_mig_s=_predicted_t_mig(memory_mb * MIB, m))


def _row(sc: simulation.Scenario, t: simulation.Totals, **extra: Any) -> dict[str, Any]:
    return {**extra, "policy": sc.policy, "r_data_mbps": sc.r_data_bps / simulation.MBIT,
            "t_mig_s": sc.t_mig_s, "replicas": sc.replicas if sc.policy == "replicas" else 0,
            "placement": sc.placement, "epsilon_kb": sc.epsilon_bytes * 8 / 1e3,
            "core_gb": t.core_bytes / 1e9, "migrations": t.migrations,
            "migration_gb": t.migration_bytes / 1e9, "remote_fraction": t.remote_fraction,
            "energy_kj": t.energy_j / 1e3, "users": t.users}


def _emit(payload: dict[str, Any], rows: Sequence[dict[str, Any]], columns: Sequence[str],
          as_json: bool, title: str) -> None:
    if as_json:
        click.echo(json.dumps(simreport.jsonable(payload)))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="left" if col in ("policy", "placement") else "right")
    for row in rows:
        table.add_row(*(_fmt(row.get(c)) for c in columns))
    console = Console()
    console.print(table)
    for name, path in payload.get("files", {}).items():
        console.print(f"{name}: {path}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "∞" if value == float("inf") else f"{value:,.4g}"
    return str(value)


def _shares_dict(shares: simulation.LocationShares | None) -> dict[str, float]:
    if shares is None:
        return {}
    return {f"{f:.0%}": round(shares.percent(f), 2) for f in shares.fractions}


# ----------------------------------------------------------------------------- commands


@click.group(name="simulate")
def command() -> None:
    """Trace-driven simulation of proxy placement: Fig. 6a/6b of the paper and beyond."""


@command.command()
@_options
@click.option("--memory-mb", type=LIST, default="256,512,1024", show_default=True,
              help="VM memory sizes M.")
@click.option("--r-data-mbps", type=LIST, default=DEFAULT_R_DATA, show_default=True,
              help="Per-user data rates r_data.")
@click.option("--policies", default="static,dynamic,oracle,replicas", show_default=True,
              help=f"Comma-separated, of {', '.join(simulation.POLICIES)}.")
def fig6a(memory_mb: list[float], r_data_mbps: list[float], policies: str,
          **kw: Any) -> None:
    """Core traffic per day vs r_data for each M and policy (Fig. 6a)."""
    src, m, out, as_json = _split(kw)
    chosen = _policies(policies)
    t_mig = {int(mb * MIB): _predicted_t_mig(mb * MIB, m) for mb in memory_mb}
    t_rep = {mem: _predicted_t_mig(mem * m.replica_delta, m) for mem in t_mig}
    pairs = simulation.fig6a_scenarios([r * simulation.MBIT for r in r_data_mbps], t_mig,
                                       chosen, _base(m), t_rep)
    started = time.perf_counter()
    totals, shares, personal = _simulate(src, _layout(src), [s for _, s in pairs], as_json,
                                         m.replicas)
    rows = [_row(sc, t, memory_mb=mem // MIB) for (mem, sc), t in zip(pairs, totals, strict=True)]
    files = {"csv": simreport.write_csv(out / "fig6a.csv", rows),
             "png": simreport.plot_fig6a(out / "fig6a.png", rows)}
    payload = {"figure": "6a", "users": totals[0].users if totals else 0,
               "seconds": round(time.perf_counter() - started, 3),
               "t_mig_s": {str(k // MIB): v for k, v in t_mig.items()},
               "t_mig_model": _t_mig_model(m),
               "personal_history": personal, "fig6b_shares_pct": _shares_dict(shares),
               "rows": rows}
    files["json"] = simreport.write_json(out / "fig6a.json", payload)
    payload["files"] = {k: str(v) for k, v in files.items()}
    _emit(payload, rows, ["memory_mb", "policy", "r_data_mbps", "core_gb", "migrations",
                          "remote_fraction"], as_json, "Fig. 6a: core traffic per day")


def _policies(text: str) -> list[str]:
    chosen = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in chosen if p not in simulation.POLICIES]
    if bad or not chosen:
        raise UserError(f"unknown policy {', '.join(bad) or '(none)'}; "
                        f"choose from {', '.join(simulation.POLICIES)}")
    return chosen


@command.command()
@_options
def fig6b(**kw: Any) -> None:
    """Share of users spending 90/95/99 % of the day at ≤ N locations (Fig. 6b)."""
    src, _, out, as_json = _split(kw)
    layout = _layout(src)
    shares: simulation.LocationShares | None = None
    with _progress(as_json) as bar:
        task = bar.add_task("counting locations", total=_n_chunks(src))
        for _, today in _days(src, layout):
            s = simulation.location_shares(dwell.visits_from_minutes(today))
            shares = s if shares is None else shares + s
            bar.advance(task)
    assert shares is not None  # _days yields at least one chunk or raises
    rows = [{"fraction": f, "locations": n, "users_pct": round(shares.percent(f, n), 3),
             "paper_pct": simulation.PAPER_FIG6B.get(f) if n == 4 else None}
            for f in shares.fractions for n in range(1, shares.counts.shape[1] + 1)]
    files = {"csv": simreport.write_csv(out / "fig6b.csv", rows),
             "png": simreport.plot_fig6b(out / "fig6b.png", shares)}
    payload = {"figure": "6b", "users": shares.users, "at_4_locations_pct": _shares_dict(shares),
               "paper_pct": {f"{f:.0%}": v for f, v in simulation.PAPER_FIG6B.items()},
               "rows": rows}
    files["json"] = simreport.write_json(out / "fig6b.json", payload)
    payload["files"] = {k: str(v) for k, v in files.items()}
    _emit(payload, [r for r in rows if r["locations"] == 4],
          ["fraction", "locations", "users_pct", "paper_pct"], as_json,
          "Fig. 6b: users at ≤ 4 locations")


@command.command(name="run")
@_options
@click.option("--memory-mb", type=Finite(min=0, min_open=True), default=512.0,
              show_default=True)
@click.option("--r-data-mbps", type=Finite(0), default=1.0, show_default=True)
@click.option("--policies", default=",".join(simulation.POLICIES), show_default=True)
def run_cmd(memory_mb: float, r_data_mbps: float, policies: str, **kw: Any) -> None:
    """Every policy at one operating point, with the T_BS estimator's accuracy."""
    src, m, out, as_json = _split(kw)
    t_rep = _predicted_t_mig(memory_mb * MIB * m.replica_delta, m)
    base = replace(_at(m, memory_mb, r_data_mbps), replica_t_mig_s=t_rep)
    t_mig = base.t_mig_s
    scenarios = [replace(base, policy=p) for p in _policies(policies)]
    layout = _layout(src)
    totals, shares, personal = _simulate(src, layout, scenarios, as_json, m.replicas)
    rows = [_row(sc, t, memory_mb=memory_mb) for sc, t in zip(scenarios, totals, strict=True)]
    payload = {"users": totals[0].users, "t_mig_s": t_mig, "replica_t_mig_s": t_rep,
               "t_mig_model": _t_mig_model(m),
               "personal_history": personal, "dwell_accuracy": _accuracy(src, layout, base),
               "fig6b_shares_pct": _shares_dict(shares), "rows": rows}
    title = f"r_data {r_data_mbps:g} Mb/s, M {memory_mb:g} MB, Tmig {t_mig:.1f} s"
    files = {"csv": simreport.write_csv(out / "run.csv", rows),
             "png": simreport.plot_run(out / "run.png", rows,
                                       f"{totals[0].users:,} users, {title}")}
    files["json"] = simreport.write_json(out / "run.json", payload)
    payload["files"] = {k: str(v) for k, v in files.items()}
    _emit(payload, rows, ["policy", "core_gb", "migrations", "migration_gb", "remote_fraction",
                          "energy_kj"], as_json, title)


def _accuracy(src: SourceOpts, layout: mobility.Layout,
              sc: simulation.Scenario) -> dict[str, Any]:
    """Estimator accuracy on the first chunk, at the dwell above which Eq. 1 migrates."""
    chunk = next(_chunks(replace(src, users=min(src.users, src.chunk_users)), layout, 0))
    v = chunk.prepared.visits
    dwell_star = ((sc.t_mig_s * (sc.r_mig_bps + sc.r_data_bps) + sc.epsilon_bytes)
                  / sc.r_data_bps if sc.r_data_bps > 0 else float("inf"))
    acc = dwell.accuracy(chunk.prepared.predicted_s, dwell.oracle_dwell(v),
                         dwell_star if np.isfinite(dwell_star) else None)
    return {**acc.as_dict(), "sample_users": v.n_users}


@command.group()
def sweep() -> None:
    """Beyond the paper: replica count and placement, overhead ε, energy-aware rule."""


@sweep.command(name="replicas")
@_options
@click.option("--k", "ks", type=LIST, default="0,1,2,3,4,6", show_default=True)
@click.option("--memory-mb", type=Finite(min=0, min_open=True), default=512.0,
              show_default=True)
@click.option("--r-data-mbps", type=Finite(0), default=1.0, show_default=True)
def sweep_replicas(ks: list[float], memory_mb: float, r_data_mbps: float, **kw: Any) -> None:
    """Core traffic vs number of replicas k, for each placement rule."""
    src, m, out, as_json = _split(kw)
    kk = sorted({int(k) for k in ks})
    base = replace(_at(m, memory_mb, r_data_mbps),
                   replica_t_mig_s=_predicted_t_mig(memory_mb * MIB * m.replica_delta, m))
    scenarios = simulation.replica_sweep(base, kk)
    totals, _, _ = _simulate(src, _layout(src), scenarios, as_json, max(kk))
    rows = [_row(sc, t, memory_mb=memory_mb) for sc, t in zip(scenarios, totals, strict=True)]
    _finish_sweep(out, "sweep-replicas", rows, "replicas", "placement", as_json,
                  "core traffic vs replica count k", "replicas k")


@sweep.command(name="epsilon")
@_options
@click.option("--epsilons-kb", type=LIST, default="0,500,5000,50000,500000", show_default=True)
@click.option("--memory-mb", type=Finite(min=0, min_open=True), default=512.0,
              show_default=True)
@click.option("--r-data-mbps", type=Finite(0), default=1.0, show_default=True)
def sweep_epsilon(epsilons_kb: list[float], memory_mb: float, r_data_mbps: float,
                  **kw: Any) -> None:
    """Core traffic and migrations vs the fixed overhead ε, dynamic and oracle."""
    src, m, out, as_json = _split(kw)
    base = _at(m, memory_mb, r_data_mbps)
    scenarios = simulation.epsilon_sweep(base, [e * 1e3 / 8 for e in epsilons_kb],
                                         ("dynamic", "oracle", "energy"))
    totals, _, _ = _simulate(src, _layout(src), scenarios, as_json, m.replicas)
    rows = [_row(sc, t, memory_mb=memory_mb) for sc, t in zip(scenarios, totals, strict=True)]
    _finish_sweep(out, "sweep-epsilon", rows, "epsilon_kb", "policy", as_json,
                  "core traffic vs migration overhead ε", "ε (kb)", log_x=True)


@sweep.command(name="energy")
@_options
@click.option("--migration-j", "migration_js", type=LIST, default="0,20,200,2000,20000",
              show_default=True, help="Fixed host energy of one migration, in joules.")
@click.option("--memory-mb", type=Finite(min=0, min_open=True), default=512.0,
              show_default=True)
@click.option("--r-data-mbps", type=Finite(0), default=1.0, show_default=True)
def sweep_energy(migration_js: list[float], memory_mb: float, r_data_mbps: float,
                 **kw: Any) -> None:
    """Energy per day vs the energy cost of a migration: Eq. 1 vs its energy-aware variant."""
    src, m, out, as_json = _split(kw)
    base = _at(m, memory_mb, r_data_mbps)
    scenarios = [replace(base, policy=p, energy=replace(m.energy, host_j_per_migration=j))
                 for p in ("static", "dynamic", "energy", "oracle") for j in migration_js]
    totals, _, _ = _simulate(src, _layout(src), scenarios, as_json, m.replicas)
    rows = [_row(sc, t, memory_mb=memory_mb, migration_j=sc.energy.host_j_per_migration,
                 host_j_per_mb=sc.energy.host_j_per_byte * 1e6,
                 core_j_per_mb=sc.energy.core_j_per_byte * 1e6)
            for sc, t in zip(scenarios, totals, strict=True)]
    _finish_sweep(out, "sweep-energy", rows, "migration_j", "policy", as_json,
                  "energy vs the energy cost of one migration", "energy per migration (J)",
                  log_x=True, y=("energy_kj", "energy per day (kJ, log scale)"), log_y=True)


def _finish_sweep(out: Path, name: str, rows: list[dict[str, Any]], x: str, group: str,
                  as_json: bool, title: str, xlabel: str, log_x: bool = False,
                  y: tuple[str, str] = ("core_gb", "core traffic per day (GB)"),
                  log_y: bool = False) -> None:
    files = {"csv": simreport.write_csv(out / f"{name}.csv", rows),
             "png": simreport.plot_sweep(out / f"{name}.png", rows, x, y[0], group, title,
                                         xlabel, y[1], log_x, log_y)}
    payload: dict[str, Any] = {"sweep": name, "rows": rows}
    files["json"] = simreport.write_json(out / f"{name}.json", payload)
    payload["files"] = {k: str(v) for k, v in files.items()}
    columns = [group, x, "core_gb", "migrations", "remote_fraction"]
    _emit(payload, rows, columns + ([y[0]] if y[0] not in columns else []), as_json, title)


# ----------------------------------------------------------------------------- traces


@command.group()
def trace() -> None:
    """Generate, export and import mobility traces (CSV user,minute,bs_id)."""


@trace.command(name="generate")
@click.option("--users", type=count(1, 10_000_000), default=13_000, show_default=True)
@click.option("--seed", type=count(0, 2**32 - 1), default=0, show_default=True)
@click.option("--day", type=count(0, 100_000), default=0, show_default=True)
@click.option("--bs", "n_bs", type=count(1, 10_000_000), default=5962, show_default=True)
@click.option("--fog-nodes", type=count(1, 10_000_000), default=None)
@click.option("--chunk-users", type=count(1, 10_000_000), default=8192, show_default=True)
@click.option("--out", "out_file", type=click.Path(dir_okay=False), required=True,
              help="CSV file to write.")
@click.option("--layout-out", type=click.Path(dir_okay=False), default=None,
              help="Also write the BS layout as CSV.")
@click.option("--json", "as_json", is_flag=True)
def trace_generate(users: int, seed: int, day: int, n_bs: int, fog_nodes: int | None,
                   chunk_users: int, out_file: str, layout_out: str | None,
                   as_json: bool) -> None:
    """Write a synthetic trace (and optionally its layout) as CSV."""
    if fog_nodes is not None and fog_nodes > n_bs:
        raise UserError(f"--fog-nodes {fog_nodes} exceeds --bs {n_bs}")
    started = time.perf_counter()
    layout = mobility.make_layout(mobility.LayoutParams(n_bs=n_bs, n_fog=fog_nodes, seed=seed))
    try:
        if layout_out:
            traces.write_layout(layout_out, layout)
        with _progress(as_json) as bar:
            task = bar.add_task("writing trace", total=-(-users // chunk_users))
            rows = traces.write_trace(out_file, _advancing(
                mobility.generate(layout, users, seed=seed, day=day, chunk_users=chunk_users),
                lambda: bar.advance(task)))
    except OSError as exc:
        raise UserError(f"cannot write {exc.filename}: {exc.strerror}") from None
    payload = {"trace": out_file, "layout": layout_out, "users": users, "rows": rows,
               "bs": n_bs, "fog_nodes": layout.n_fog, "seed": seed, "day": day,
               "seconds": round(time.perf_counter() - started, 3)}
    _emit(payload, [payload], ["users", "rows", "bs", "fog_nodes", "seconds"], as_json,
          f"trace written to {out_file}")


def _advancing(items: Iterator[Any], tick: Callable[[], None]) -> Iterator[Any]:
    for item in items:
        yield item
        tick()


@trace.command(name="import")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--layout", type=click.Path(dir_okay=False), default=None,
              help="CSV layout bs_id,x_m,y_m,fog_id; without it BS ids are checked by --bs.")
@click.option("--bs", "n_bs", type=count(1, 10_000_000), default=5962, show_default=True)
@click.option("--minutes", type=count(1, 100_000), default=mobility.MINUTES_PER_DAY,
              show_default=True)
@click.option("--chunk-users", type=count(1, 10_000_000), default=8192, show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Also write import-summary.json here.")
@click.option("--json", "as_json", is_flag=True)
def trace_import(path: str, layout: str | None, n_bs: int, minutes: int, chunk_users: int,
                 out_dir: str | None, as_json: bool) -> None:
    """Validate a CSV trace (streamed) and summarise it, with its Fig. 6b shares."""
    src = SourceOpts(0, 0, n_bs, None, chunk_users, path, layout, minutes)
    lay = _layout(src) if layout else None
    n = lay.n_bs if lay else n_bs
    shares: simulation.LocationShares | None = None
    users = 0
    try:
        with _progress(as_json) as bar:
            task = bar.add_task("validating", total=None)
            for chunk in traces.read_trace(path, n, minutes, chunk_users):
                s = simulation.location_shares(dwell.visits_from_minutes(chunk.places))
                shares = s if shares is None else shares + s
                users += len(chunk.users)
                bar.advance(task, len(chunk.users))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None
    except traces.TraceError as exc:
        raise UserError(f"{path}: {exc}") from None
    payload: dict[str, Any] = {"trace": path, "valid": True, "users": users,
                               "rows": users * minutes, "bs": n, "minutes": minutes,
                               "at_4_locations_pct": _shares_dict(shares)}
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        payload["files"] = {"json": str(simreport.write_json(
            Path(out_dir) / "import-summary.json", payload))}
    _emit(payload, [payload], ["users", "rows", "bs", "minutes"], as_json,
          f"{path}: valid")
