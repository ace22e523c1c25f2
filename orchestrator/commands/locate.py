"""`orchestrator locate DEVICE --bs BS`: one location update through the control plane.

Also `--serve ADDR:PORT`: the line-JSON endpoint the SDN controller's relay forwards the
MME's updates to (loopback or the lab gateway only; every update signed with the lab's relay
key, see `lab.controller.api.RelayAuth`), running until interrupted. Updates are applied in
this process's main thread, the one that opened the records.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from orchestrator import calibration_store
from orchestrator.commands._common import (
    app,
    fleet_session,
    inventory_option,
    json_option,
    print_json,
    print_table,
    store,
)
from orchestrator.commands._numbers import MBIT_MAX, MIB_S_MAX, non_negative, positive
from orchestrator.edge.control import LocationServer, build_control_plane, check_listen_address
from orchestrator.errors import UserError
from orchestrator.lab.controller.api import RelayAuth, load_relay_key, relay_key_file
from orchestrator.lab.state import LabPaths
from orchestrator.model.controller import POLICIES, ControlParams
from orchestrator.model.mme import LocationUpdate

MB = 1e6


def _params(policy: str, r_data_mbit: float, r_mig_mib: float, epsilon_kb: float) -> ControlParams:
    try:
        return ControlParams(policy=policy, r_data_bps=r_data_mbit * MB / 8,
                             r_mig_bps=r_mig_mib * 2**20, epsilon_bytes=epsilon_kb * 1e3 / 8)
    except ValueError as exc:
        raise UserError(str(exc)) from None


@click.command("locate")
@click.argument("device", required=False)
@click.option("--bs", "bs_id", default=None, help="Base station the device is now at.")
@click.option("--member", "members", multiple=True,
              help="Device a cluster head reports for (repeatable).")
@click.option("--policy", type=click.Choice(POLICIES), default="dynamic", show_default=True)
@click.option("--r-data", "r_data_mbit", type=positive(MBIT_MAX), default=1.0, show_default=True,
              help="Data rate per device, Mb/s.")
@click.option("--r-mig", "r_mig_mib", type=positive(MIB_S_MAX), default=20.0, show_default=True,
              help="Migration bandwidth, MiB/s.")
@click.option("--epsilon", "epsilon_kb", type=non_negative(), default=500.0, show_default=True,
              help="ε, kilobits.")
@click.option("--serve", default=None, metavar="ADDR:PORT",
              help="Serve line-JSON updates on ADDR:PORT instead (loopback or lab gateway).")
@inventory_option
@json_option
@click.pass_context
def command(ctx: click.Context, device: str | None, bs_id: str | None,
            members: tuple[str, ...], policy: str, r_data_mbit: float, r_mig_mib: float,
            epsilon_kb: float, serve: str | None, inventory: str | None,
            as_json: bool) -> None:
    """Report DEVICE at base station --bs; prints the decisions it caused."""
    params = _params(policy, r_data_mbit, r_mig_mib, epsilon_kb)
    calibration = calibration_store.load(app(ctx).state_path)
    with fleet_session(ctx, inventory) as session, store(ctx) as records:
        plane = build_control_plane(session, records, app(ctx).state_path, params, calibration)
        if serve:
            _serve(serve, plane, session.fleet.gateway, session.fleet.nodes,
                   relay_key_path(app(ctx).state_path, session.fleet.nodes))
            return
        if not device or not bs_id:
            raise UserError("give DEVICE and --bs BS (or --serve ADDR:PORT)")
        actions = plane.handle(LocationUpdate(device, bs_id, time.time(), members))
    if as_json:
        print_json(actions)
        return
    print_table(f"{device} at {bs_id}", ["verdict", "proxy", "hop", "result"],
                [(a["verdict"], a["proxy"], f"{a['source'] or '-'}→{a['destination'] or '-'}",
                  a["result"].get("status")) for a in actions])


def relay_key_path(state_dir: Path, nodes: dict[str, Any]) -> Path:
    """The key `locate --serve` shares with the relay: the lab's own (its state directory),
    or, for a real-host inventory, one in the orchestrator's state directory."""
    labs = {str(n.facts["lab"]) for n in nodes.values() if n.facts.get("lab")}
    if len(labs) == 1:
        return relay_key_file(LabPaths(state_dir, labs.pop()).root)
    return relay_key_file(state_dir)


def _serve(spec: str, plane: object, gateway: str | None, nodes: dict[str, Any],
           key_file: Path) -> None:
    host, _, port = spec.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UserError(f"--serve wants ADDR:PORT, got {spec!r}")
    gateways = {gateway} if gateway else set()
    gateways |= {str(getattr(n, "facts", {}).get("gateway")) for n in nodes.values()}
    check_listen_address(host, gateways)
    auth = RelayAuth(load_relay_key(key_file))
    try:
        server = LocationServer((host, int(port)), plane, auth)  # type: ignore[arg-type]
    except OSError as exc:
        raise UserError(f"cannot listen on {spec}: {exc.strerror}") from None
    click.echo(f"location updates on {host}:{port} (line JSON signed with {key_file}); "
               "Ctrl-C to stop")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
