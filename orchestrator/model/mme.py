"""Mobility management entity: location updates in, device → BS → fog node out, roams.

Why a pure state machine: the live orchestrator, the benchmark and the scenario replay
feed it the same updates and must see the same roams. It knows

* base stations and the fog node(s) serving each (several BSs may share a node; a BS may
  list co-located alternates that reach the devices at the same core cost — the first is
  the primary);
* which user owns each device (a user's devices are the unit a proxy VM serves);
* where each device was last seen.

A location update names one device, or a cluster head (e.g. a phone reporting for its
body-area network) together with the members it speaks for: every member moves with it.
An update that changes a device's BS yields a `Roam`; `node_changed` says whether the fog
node changed too — only those can trigger a migration. Updates older than the last one
seen for a device are ignored (reordered delivery must not move a device back).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


class MmeError(ValueError):
    """An update or registration that cannot be applied (unknown BS, device, ...)."""


@dataclass(frozen=True)
class BaseStation:
    bs_id: str
    node: str  # primary fog node
    alternates: tuple[str, ...] = ()  # co-located fog nodes at the same core cost

    @property
    def nodes(self) -> tuple[str, ...]:
        return (self.node, *self.alternates)


@dataclass(frozen=True)
class LocationUpdate:
    device: str  # the reporting device (or cluster head)
    bs_id: str
    at_s: float
    members: tuple[str, ...] = ()  # devices a cluster head reports for (besides itself)


@dataclass(frozen=True)
class Roam:
    """One device moved to another BS."""

    device: str
    user: str
    from_bs: str | None  # None: first sighting
    to_bs: str
    from_node: str | None
    to_node: str
    at_s: float

    @property
    def node_changed(self) -> bool:
        return self.from_node != self.to_node


@dataclass
class _Seen:
    bs_id: str
    at_s: float


@dataclass
class Mme:
    """Tracks devices; `update` returns the roams an update caused (possibly none)."""

    stations: dict[str, BaseStation] = field(default_factory=dict)
    owners: dict[str, str] = field(default_factory=dict)  # device → user
    _seen: dict[str, _Seen] = field(default_factory=dict)

    @classmethod
    def from_maps(cls, bs_nodes: Mapping[str, str], owners: Mapping[str, str]) -> Mme:
        return cls({b: BaseStation(b, n) for b, n in bs_nodes.items()}, dict(owners))

    def add_bs(self, bs: BaseStation) -> None:
        self.stations[bs.bs_id] = bs

    def register(self, device: str, user: str) -> None:
        """A device belongs to one user; re-registering under another user is refused."""
        known = self.owners.get(device)
        if known is not None and known != user:
            raise MmeError(f"device {device!r} already belongs to {known!r}")
        self.owners[device] = user

    def node_of_bs(self, bs_id: str) -> str:
        try:
            return self.stations[bs_id].node
        except KeyError:
            raise MmeError(f"unknown base station {bs_id!r}") from None

    def update(self, upd: LocationUpdate) -> list[Roam]:
        """Apply one update; every reported device must be registered."""
        to_node = self.node_of_bs(upd.bs_id)
        roams = []
        for device in (upd.device, *upd.members):
            user = self.owners.get(device)
            if user is None:
                raise MmeError(f"unknown device {device!r}")
            roam = self._move(device, user, upd.bs_id, to_node, upd.at_s)
            if roam is not None:
                roams.append(roam)
        return roams

    def _move(self, device: str, user: str, bs_id: str, to_node: str,
              at_s: float) -> Roam | None:
        seen = self._seen.get(device)
        if seen is not None and at_s < seen.at_s:
            return None  # stale: a newer position is already known
        if seen is not None and seen.bs_id == bs_id:
            seen.at_s = at_s
            return None
        self._seen[device] = _Seen(bs_id, at_s)
        from_bs = seen.bs_id if seen else None
        from_node = self.stations[from_bs].node if from_bs in self.stations else None
        return Roam(device, user, from_bs, bs_id, from_node, to_node, at_s)

    def where(self, device: str) -> tuple[str, str] | None:
        """(BS, fog node) of a device, or None if it was never seen."""
        seen = self._seen.get(device)
        if seen is None:
            return None
        return seen.bs_id, self.stations[seen.bs_id].node

    def devices_of(self, user: str) -> list[str]:
        return sorted(d for d, u in self.owners.items() if u == user)

    def user_nodes(self, user: str) -> dict[str, tuple[str, ...]]:
        """Fog node → the user's devices currently behind it (unseen devices left out)."""
        out: dict[str, list[str]] = {}
        for device in self.devices_of(user):
            place = self.where(device)
            if place is not None:
                out.setdefault(place[1], []).append(device)
        return {node: tuple(devs) for node, devs in sorted(out.items())}


def roams_by_user(roams: Iterable[Roam]) -> dict[str, list[Roam]]:
    """Group an update's roams per user (a cluster head's update moves one user at once)."""
    out: dict[str, list[Roam]] = {}
    for roam in roams:
        out.setdefault(roam.user, []).append(roam)
    return out
