"""Connections to every node of a fleet, opened on first use and closed together."""

from __future__ import annotations

from types import TracebackType

from orchestrator.fleet import Fleet
from orchestrator.fog.hypervisor import Guest, Hypervisor


class FleetSession:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self._open: dict[str, Hypervisor] = {}

    def __enter__(self) -> FleetSession:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None,
                                   TracebackType | None]) -> None:
        self.close()

    def hypervisor(self, node: str) -> Hypervisor:
        if node not in self._open:
            self._open[node] = Hypervisor.open(self.fleet.node(node), self.fleet.policy)
        return self._open[node]

    def locate(self, vm: str) -> list[Guest]:
        """Every node's domain of that name, running or not (normally zero or one)."""
        found = []
        for name in sorted(self.fleet.nodes):
            guest = self.hypervisor(name).lookup(vm)
            if guest is not None:
                found.append(guest)
        return found

    def running_on(self, vm: str) -> list[str]:
        return [g.node for g in self.locate(vm) if g.is_running()]

    def close(self) -> None:
        for hv in self._open.values():
            hv.close()
        self._open.clear()
