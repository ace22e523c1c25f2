"""Connections to every node of a fleet, opened on first use and closed together."""

from __future__ import annotations

from types import TracebackType

from orchestrator.errors import OrchestratorError, UnsafeDestination
from orchestrator.fleet import Fleet
from orchestrator.fog.hypervisor import Guest, Hypervisor


class FleetSession:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._open: dict[str, Hypervisor] = {}
        self.unreachable: dict[str, str] = {}  # node → why, for nodes skipped by scans

    def __enter__(self) -> FleetSession:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None,
                                   TracebackType | None]) -> None:
        self.close()

    def hypervisor(self, node: str) -> Hypervisor:
        """The node's connection, reopened if it died (e.g. its libvirtd restarted)."""
        cached = self._open.get(node)
        if cached is not None and not cached.is_alive():
            cached.close()
            cached = None
        if cached is None:
            cached = self._open[node] = Hypervisor.open(self.fleet.node(node), self.fleet.policy)
        return cached

    def reachable(self) -> list[Hypervisor]:
        """Connections to every node that answers; the others are noted in `unreachable`.

        A fog node that disappeared must not stop the orchestrator from working with the
        rest of the fleet."""
        found = []
        for name in sorted(self.fleet.nodes):
            try:
                found.append(self.hypervisor(name))
            except UnsafeDestination:
                raise
            except OrchestratorError as exc:
                self.unreachable[name] = str(exc)
        return found

    def locate(self, vm: str) -> list[Guest]:
        """Every reachable node's domain of that name, running or not (normally one)."""
        found = []
        for hv in self.reachable():
            try:
                guest = hv.lookup(vm)
            except OrchestratorError as exc:
                self.unreachable[hv.node.name] = str(exc)
                continue
            if guest is not None:
                found.append(guest)
        return found

    def running_on(self, vm: str) -> list[str]:
        return [g.node for g in self.locate(vm) if g.is_running()]

    def close(self) -> None:
        for hv in self._open.values():
            hv.close()
        self._open.clear()
