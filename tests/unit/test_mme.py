"""MME: location updates → device → BS → fog node, roams, cluster heads, stale updates."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.model.mme import BaseStation, LocationUpdate, Mme, MmeError, roams_by_user


def make() -> Mme:
    mme = Mme.from_maps({"b1": "fog1", "b2": "fog1", "b3": "fog2"},
                        {"hr": "alice", "gps": "alice", "cam": "bob"})
    return mme


def test_first_sighting_is_a_roam_from_nowhere() -> None:
    mme = make()
    [roam] = mme.update(LocationUpdate("hr", "b1", 0.0))
    assert (roam.from_bs, roam.to_bs, roam.to_node, roam.node_changed) == (None, "b1", "fog1", True)
    assert mme.where("hr") == ("b1", "fog1")


def test_bs_change_on_same_node_is_a_roam_without_node_change() -> None:
    mme = make()
    mme.update(LocationUpdate("hr", "b1", 0.0))
    [roam] = mme.update(LocationUpdate("hr", "b2", 1.0))
    assert not roam.node_changed
    [roam] = mme.update(LocationUpdate("hr", "b3", 2.0))
    assert (roam.from_node, roam.to_node, roam.node_changed) == ("fog1", "fog2", True)


def test_same_bs_again_and_stale_updates_are_no_roams() -> None:
    mme = make()
    mme.update(LocationUpdate("hr", "b1", 5.0))
    assert mme.update(LocationUpdate("hr", "b1", 6.0)) == []
    assert mme.update(LocationUpdate("hr", "b3", 1.0)) == []  # older than what we know
    assert mme.where("hr") == ("b1", "fog1")


def test_cluster_head_moves_its_members() -> None:
    mme = make()
    roams = mme.update(LocationUpdate("hr", "b3", 0.0, members=("gps",)))
    assert {r.device for r in roams} == {"hr", "gps"}
    assert roams_by_user(roams).keys() == {"alice"}
    assert mme.user_nodes("alice") == {"fog2": ("gps", "hr")}


def test_unknown_bs_or_device_refused() -> None:
    mme = make()
    with pytest.raises(MmeError, match="base station"):
        mme.update(LocationUpdate("hr", "nope", 0.0))
    with pytest.raises(MmeError, match="device"):
        mme.update(LocationUpdate("ghost", "b1", 0.0))


def test_device_cannot_change_owner() -> None:
    mme = make()
    mme.register("hr", "alice")
    with pytest.raises(MmeError, match="belongs"):
        mme.register("hr", "bob")


def test_alternates_listed_after_primary() -> None:
    mme = make()
    mme.add_bs(BaseStation("b9", "fog3", ("fog4",)))
    assert mme.stations["b9"].nodes == ("fog3", "fog4")
    assert mme.node_of_bs("b9") == "fog3"


@given(st.lists(st.tuples(st.sampled_from(["hr", "gps", "cam"]),
                          st.sampled_from(["b1", "b2", "b3"])), max_size=40))
def test_where_is_the_last_update(updates: list[tuple[str, str]]) -> None:
    mme = make()
    last: dict[str, str] = {}
    for t, (dev, bs) in enumerate(updates):
        roams = mme.update(LocationUpdate(dev, bs, float(t)))
        assert len(roams) == (0 if last.get(dev) == bs else 1)
        last[dev] = bs
    for dev, bs in last.items():
        assert mme.where(dev) == (bs, mme.node_of_bs(bs))
