"""The lab builder's refusals and teardown, and the per-node daemon configuration, against a
scripted kernel (no namespaces, links or daemons are created)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import pytest

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.images import GuestImage
from orchestrator.lab import state
from orchestrator.lab.builder import Lab
from orchestrator.lab.daemons import (
    LIBVIRT_PATHS,
    NodeDirs,
    libvirtd_conf,
    prepare_node_dirs,
    qemu_conf,
)
from orchestrator.lab.topology import MAX_NODES, LabSpec, plan
from orchestrator.runner import CommandResult


class ScriptedKernel:
    """Answers iproute2's listings from lists and applies deletions to them; any command
    that would create something fails the test."""

    def __init__(self, netns: Sequence[str] = (), links: Sequence[str] = (),
                 routes: Sequence[dict[str, str]] = (), tables: Sequence[str] = ()) -> None:
        self.netns, self.links, self.routes = list(netns), list(links), list(routes)
        self.tables = list(tables)  # the root namespace's inet tables
        self.calls: list[tuple[str, ...]] = []

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = 60.0) -> CommandResult:
        cmd = tuple(argv)
        self.calls.append(cmd)
        out = ""
        if cmd == ("ip", "-j", "netns", "list"):
            out = json.dumps([{"name": n} for n in self.netns]) if self.netns else ""
        elif cmd == ("ip", "-j", "link", "show"):
            out = json.dumps([{"ifname": n} for n in self.links])
        elif cmd == ("ip", "-j", "route", "show"):
            out = json.dumps(self.routes)
        elif cmd[:3] == ("ip", "netns", "pids"):
            out = ""  # never a real pid: nothing may be signalled from a unit test
        elif cmd[:3] == ("ip", "netns", "delete"):
            if cmd[3] in self.netns:
                self.netns.remove(cmd[3])
        elif cmd[:3] == ("ip", "link", "delete"):
            if cmd[3] in self.links:
                self.links.remove(cmd[3])
        elif cmd[:4] == ("nft", "delete", "table", "inet"):
            self.tables = [t for t in self.tables if t != cmd[4]]
        else:
            raise AssertionError(f"unexpected command {cmd}")
        return CommandResult(cmd, 0, out, "")

    def changes(self) -> list[tuple[str, ...]]:
        return [c for c in self.calls if "delete" in c or "add" in c]


def no_image(tmp_path):
    return GuestImage(tmp_path / "no-image")  # a refusal that failed would stop here


def test_a_second_lab_up_is_refused_and_changes_nothing(tmp_path):
    spec = LabSpec(prefix="etwo", subnet="10.74.0.0/16")
    paths = state.LabPaths(tmp_path, "etwo")
    state.save(paths, {"status": "up", "spec": {}, "nodes": [{"name": "fog1"}]})
    before = paths.state_file.read_text()
    kernel = ScriptedKernel(netns=["etwo-fog1"], links=["etwo-core"],
                            routes=[{"dst": "10.74.0.0/16", "dev": "etwo-core"}])
    with pytest.raises(UserError, match="already up"):
        Lab(spec, tmp_path, runner=kernel, image=no_image(tmp_path)).up()
    assert paths.state_file.read_text() == before
    assert kernel.changes() == []


def test_lab_up_over_a_crashed_labs_leftovers_is_refused(tmp_path):
    kernel = ScriptedKernel(netns=["ecr-fog2"])
    with pytest.raises(UserError, match="left by a crash"):
        Lab(LabSpec(prefix="ecr"), tmp_path, runner=kernel, image=no_image(tmp_path)).up()
    assert state.load(state.LabPaths(tmp_path, "ecr")) is None
    assert kernel.changes() == []


def test_lab_up_on_a_subnet_routed_elsewhere_is_refused(tmp_path):
    kernel = ScriptedKernel(routes=[{"dst": "10.77.0.0/16", "dev": "other-core"}])
    with pytest.raises(UserError, match="already routed"):
        Lab(LabSpec(prefix="esub"), tmp_path, runner=kernel, image=no_image(tmp_path)).up()
    assert state.load(state.LabPaths(tmp_path, "esub")) is None
    assert kernel.changes() == []


def test_without_a_state_file_teardown_scans_the_widest_lab_of_the_prefix(tmp_path):
    spec = Lab.recorded(tmp_path, "ecr").spec
    assert (spec.prefix, spec.nodes, spec.cloud) == ("ecr", MAX_NODES, True)


def test_down_after_a_crash_removes_exactly_the_prefixed_objects_and_is_idempotent(tmp_path):
    spec = LabSpec(prefix="ecr", nodes=MAX_NODES, cloud=True)  # what Lab.recorded scans
    kernel = ScriptedKernel(
        netns=["ecr-fog1", "ecr-fog1-dev", "ecr-fog3", "ecr2-fog1", "other"],
        links=["lo", "eth0", "ecr-core", "ecr-fog1c", "ecr-fog3c", "ecr2-core", "ecrx"],
        tables=["ecr-guard", "ecr2-guard", "filter"])
    paths = state.LabPaths(tmp_path, "ecr")
    for key in ("run", "lib", "etc", "cache"):
        (paths.node_dir("fog1") / key).mkdir(parents=True)
    (paths.root / "image").mkdir()
    state.save(paths, {"status": "starting", "nodes": [{"name": "fog1",
                                                        "namespace": "ecr-fog1"}]})
    lab = Lab(spec, tmp_path, runner=kernel)
    removed = lab.down()
    assert removed == {"processes": 0, "namespaces": 3, "links": 3}
    assert kernel.netns == ["ecr2-fog1", "other"]
    assert kernel.tables == ["ecr2-guard", "filter"]  # the lab's own root table, no other
    assert kernel.links == ["lo", "eth0", "ecr2-core", "ecrx"]
    deleted = [c[3] for c in kernel.calls if c[:3] == ("ip", "link", "delete")]
    assert deleted[-1] == "ecr-core"  # veths first, the core bridge last
    assert state.load(paths) is None and not (paths.root / "image").exists()
    assert not any((paths.node_dir("fog1") / key).exists()
                   for key in ("run", "lib", "etc", "cache"))
    assert Lab(spec, tmp_path, runner=kernel).down() == {"processes": 0, "namespaces": 0,
                                                         "links": 0}


def test_libvirtd_listens_on_plain_tcp_on_the_lab_address_only():
    conf = libvirtd_conf("10.77.0.12", "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab")
    lines = set(conf.splitlines())
    assert {"listen_tls = 0", "listen_tcp = 1", 'listen_addr = "10.77.0.12"',
            'host_uuid = "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab"'} <= lines
    assert {'migration_address = "10.77.0.12"',
            'migration_host = "10.77.0.12"'} <= set(qemu_conf("10.77.0.12").splitlines())


def test_each_node_gets_its_own_libvirt_tree_and_host_uuid(tmp_path, monkeypatch):
    system_etc = tmp_path / "system-etc"
    (system_etc / "qemu" / "networks" / "autostart").mkdir(parents=True)
    (system_etc / "qemu" / "networks" / "autostart" / "default.xml").write_text("<network/>")
    (system_etc / "nwfilter").mkdir()
    (system_etc / "nwfilter" / "clean-traffic.xml").write_text("<filter/>")
    monkeypatch.setitem(LIBVIRT_PATHS, "etc", str(system_etc))
    topo = plan(LabSpec(prefix="etree", nodes=2))
    dirs = [NodeDirs(tmp_path / "labs" / "etree" / n.name) for n in topo.nodes]
    uuids = [prepare_node_dirs(d, n) for d, n in zip(dirs, topo.nodes, strict=True)]
    assert len(set(uuids)) == 2
    for d, n, host_id in zip(dirs, topo.nodes, uuids, strict=True):
        conf = (d.path("etc") / "libvirtd.conf").read_text()
        assert f'listen_addr = "{n.address}"' in conf and f'host_uuid = "{host_id}"' in conf
        assert not (d.path("etc") / "qemu" / "networks" / "autostart").exists()
        assert all(d.path(key).is_dir() for key in ("run", "lib", "log", "cache"))


def test_a_node_without_libvirts_anti_spoofing_filter_is_refused_before_any_daemon(
        tmp_path, monkeypatch):
    system_etc = tmp_path / "system-etc"
    (system_etc / "nwfilter").mkdir(parents=True)
    monkeypatch.setitem(LIBVIRT_PATHS, "etc", str(system_etc))
    node = plan(LabSpec(prefix="enwf", nodes=1)).nodes[0]
    with pytest.raises(UserError, match="libvirt-daemon-config-nwfilter"):
        prepare_node_dirs(NodeDirs(tmp_path / "labs" / "enwf" / "fog1"), node)
    assert not (tmp_path / "labs" / "enwf" / "fog1" / "etc" / "libvirtd.conf").exists()


def test_the_node_tree_is_bound_over_every_standard_libvirt_path(tmp_path):
    root = tmp_path / "labs" / "etree" / "fog1"
    targets = {target: source for source, target in NodeDirs(root).bind_pairs()}
    assert set(targets) == {"/etc/libvirt", "/run/libvirt", "/var/lib/libvirt",
                            "/var/log/libvirt", "/var/cache/libvirt"}
    assert all(source.startswith(f"{root}/") for source in targets.values())


def test_status_of_a_lab_that_is_down(tmp_path):
    lab = Lab(LabSpec(prefix="edwn"), tmp_path, runner=ScriptedKernel())
    assert lab.status()["status"] == "down"
    with pytest.raises(OrchestratorError, match="not up"):
        lab.fog_nodes()


def test_devices_are_entered_through_their_own_namespace_not_the_nodes(tmp_path):
    spec = LabSpec(prefix="edev", nodes=1, cloud=True)
    paths = state.LabPaths(tmp_path, "edev")
    state.save(paths, {"status": "up", "spec": {}, "nodes": [
        {"name": "fog1", "namespace": "edev-fog1"}, {"name": "cloud", "namespace": "edev-cloud"}]})
    lab = Lab(spec, tmp_path, runner=ScriptedKernel())
    assert lab.devices_netns("fog1") == "/run/netns/edev-fog1-dev"
    assert lab.devices_enter_argv("fog1") == ["nsenter", "--net=/run/netns/edev-fog1-dev", "--"]
    with pytest.raises(UserError, match="no devices namespace"):
        lab.devices_netns("cloud")
    with pytest.raises(UserError, match="unknown fog node"):
        lab.devices_netns("fog7")
