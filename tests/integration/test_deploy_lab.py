"""Issue 7 on a real lab: sshd in each fog node's namespaces, `orchestrator deploy` through
ansible-runner over SSH (twice: the second run changes nothing), `--check` applying nothing,
a run failing half-way repaired by the next, bad inventories refused naming the host, and a
real Prometheus (Debian's, started here by pid) scraping the host agents the playbook
started and the orchestrator exporter; every PromQL expression of the Grafana dashboard
returns data from it.

The records are seeded (a finished and a running migration, a decision, a VM, energy) so
every panel has something to show at any instant; on top of that one real 128 MiB guest is
migrated at a low bandwidth cap while Prometheus scrapes every second, and what it saw of
that migration (dirty rate, bandwidth, running count, completed counter, per-domain series
on both nodes) is checked over the HTTP API with `max_over_time`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from orchestrator.lab.builder import Lab
from orchestrator.lab.topology import LabSpec
from orchestrator.netguard import check_destination
from orchestrator.store import Store, VmRecord

pytestmark = pytest.mark.lab

PREFIX, SUBNET, NODES = "hdep", "10.79.0.0/16", 2
ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "orchestrator"]
DASHBOARD = ROOT / "monitoring" / "grafana" / "dashboards" / "edgeiot.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    tmp = tmp_path_factory.mktemp("deploy-lab")
    env = {**os.environ, "EDGEIOT_STATE_DIR": str(tmp / "state"), "EDGEIOT_LAB": PREFIX}
    exporter = None
    try:
        up = cli(env, "lab", "up", "--prefix", PREFIX, "--subnet", SUBNET, "--nodes", str(NODES))
        assert up.returncode == 0, up.stderr
        ssh = cli(env, "lab-ssh", "up", "--prefix", PREFIX, "--json")
        assert ssh.returncode == 0, ssh.stderr
        seed_records(tmp / "state")
        port = free_port()
        exporter = subprocess.Popen([*CLI, "metrics", "serve", "--listen", f"127.0.0.1:{port}",
                                     "--lab", PREFIX], env=env, cwd=ROOT,
                                    stderr=subprocess.DEVNULL)
        mon = tmp / "mon"
        inventory = tmp / "inventory.ini"
        made = cli(env, "lab-ssh", "inventory", "--prefix", PREFIX, "-o", str(inventory),
                   "--var", f"prometheus_config_dir={mon}/prometheus",
                   "--var", f"grafana_provisioning_dir={mon}/grafana/provisioning",
                   "--var", f"grafana_dashboards_dir={mon}/grafana/dashboards",
                   "--var", f"orchestrator_state_dir={tmp}/state",
                   "--var", f"orchestrator_bin={Path(sys.executable).parent / 'orchestrator'}",
                   "--var", f"orchestrator_metrics_target=127.0.0.1:{port}",
                   "--var", "prometheus_scrape_interval=1s")
        assert made.returncode == 0, made.stderr
        yield {"env": env, "tmp": tmp, "inventory": inventory, "mon": mon,
               "ssh": json.loads(ssh.stdout)}
    finally:
        if exporter is not None:
            exporter.terminate()
            exporter.wait(10)
        cli(env, "lab", "down", "--prefix", PREFIX)


def seed_records(state_dir: Path) -> None:
    store = Store(state_dir / "records.sqlite")
    try:
        done = store.start_migration("proxy-s1", "fog1", "fog2", {}, None, os.getpid())
        store.finish_migration(done, "completed", {"total_time_ms": 4030, "downtime_ms": 176,
                                                   "prediction_error_pct": 12.0,
                                                   "transferred_bytes": 82_000_000}, [])
        running = store.start_migration("proxy-s2", "fog2", "fog1", {}, None, os.getpid())
        store.db.execute("INSERT INTO samples VALUES (?,?,?)", (running, 0, json.dumps(
            {"dirty_rate_pages_s": 2000, "bandwidth_bps": 50 << 20, "remaining_bytes": 1 << 20})))
        store.add_vm(VmRecord("proxy-s1", "u1", "fog2", 128, 1, None, "52:54:00:00:00:01"))
        store.add_event("decision", "proxy-s1", {"verdict": "migrate"})
        store.add_event("energy", "fog1", {"green_joules": 120.0, "grid_joules": 30.0})
    finally:
        store.close()


def deploy(lab, *args: str) -> tuple[int, dict, str]:
    done = cli(lab["env"], "deploy", "--inventory", str(lab["inventory"]), "--json", *args)
    try:
        data = json.loads(done.stdout)
    except ValueError:
        data = {}
    return done.returncode, data, done.stderr


def test_sshd_runs_in_each_node_with_strict_known_hosts(lab):
    assert set(lab["ssh"]["pids"]) == {"fog1", "fog2"}
    known = Path(lab["ssh"]["known_hosts"]).read_text().splitlines()
    assert [line.split()[0] for line in known] == ["10.79.0.11", "10.79.0.12"]


def test_deploy_then_second_run_changes_nothing(lab):
    started = time.monotonic()
    rc, first, err = deploy(lab)
    first_s = time.monotonic() - started
    assert rc == 0, err
    assert first["ok"] and set(first["hosts"]) == {"fog1", "fog2", "localhost"}
    started = time.monotonic()
    rc, second, err = deploy(lab)
    assert rc == 0, err
    print(f"deploy: first {first_s:.1f} s ({first['changed']} changed), "
          f"second {time.monotonic() - started:.1f} s ({second['changed']} changed)")
    assert second["changed"] == 0, second["hosts"]
    assert (lab["mon"] / "prometheus" / "prometheus.yml").is_file()
    assert (lab["mon"] / "grafana" / "dashboards" / "edgeiot.json").is_file()


def test_the_playbook_edited_each_nodes_private_libvirt_config(lab):
    spec = LabSpec(prefix=PREFIX, nodes=NODES, subnet=SUBNET)
    state_dir = lab["tmp"] / "state"
    for node, address in (("fog1", "10.79.0.11"), ("fog2", "10.79.0.12")):
        qemu_conf = (state_dir / "labs" / PREFIX / node / "etc" / "qemu.conf").read_text()
        assert f'migration_address = "{address}"' in qemu_conf
        assert "migration_port_min = 49152" in qemu_conf
    assert Lab(spec, state_dir).status()["status"] == "up"


def agent_answers(address: str, port: int = 9100) -> bool:
    try:
        socket.create_connection((address, port), timeout=3).close()
        return True
    except OSError:
        return False


def test_check_mode_streams_progress_and_applies_nothing(lab):
    """`--check --limit fog1` with a new agent port: task progress streamed, a per-host
    summary, the change reported, nothing applied (the agent stays on its port)."""
    moved = lab["tmp"] / "agent-port.ini"
    moved.write_text(lab["inventory"].read_text().replace(
        "[lab:vars]\n", "[lab:vars]\nhost_agent_port=9101\n"))
    done = cli(lab["env"], "deploy", "--inventory", str(moved), "--playbook", "fog_node",
               "--limit", "fog1", "--check")
    assert done.returncode == 0, done.stderr
    assert "PLAY fog nodes" in done.stdout and "TASK " in done.stdout, done.stdout
    assert "changed: fog1" in done.stdout and "deploy: ok" in done.stdout, done.stdout
    assert "fog2" not in done.stdout
    assert agent_answers("10.79.0.11") and not agent_answers("10.79.0.11", 9101)


def ansible_log(lab, lines: int = 80) -> str:
    """Task, handler and result lines of the newest ansible-runner run (for failure messages)."""
    runs = sorted((lab["tmp"] / "state" / "deploy" / "artifacts").glob("*/stdout"),
                  key=lambda f: f.stat().st_mtime)
    if not runs:
        return "(no ansible-runner artifacts)"
    keep = ("TASK", "RUNNING HANDLER", "changed", "ok:", "fatal", "failed", "skipping", "PLAY")
    text = [line for line in runs[-1].read_text(errors="replace").splitlines()
            if line.startswith(keep)]
    return "\n".join(text[-lines:])


def test_a_failed_run_names_host_and_task_and_a_rerun_repairs_it(lab):
    """fog1's agent restarted with an interpreter that does not exist: the run fails naming
    fog1 and the task, leaving the agent down; the next run with the right inventory brings
    it back, and the one after changes nothing."""
    broken = lab["tmp"] / "broken-agent.ini"
    broken.write_text(re.sub(r"^host_agent_python=.*$", "host_agent_python=/nonexistent/python3",
                             lab["inventory"].read_text(), flags=re.M))
    done = cli(lab["env"], "deploy", "--inventory", str(broken), "--playbook", "fog_node",
               "--limit", "fog1", "--json")
    assert done.returncode == 1, f"{done.stdout}\n{ansible_log(lab)}"
    failures = json.loads(done.stdout)["failures"]
    assert [f["host"] for f in failures] == ["fog1"] and failures[0]["task"] not in ("", "-")
    assert f"fog1: task '{failures[0]['task']}' failed" in done.stderr
    assert not agent_answers("10.79.0.11")  # half-applied: the old agent was stopped
    rc, fixed, err = deploy(lab, "--playbook", "fog_node", "--limit", "fog1")
    assert rc == 0, err
    assert fixed["changed"] > 0 and agent_answers("10.79.0.11")
    rc, again, err = deploy(lab, "--playbook", "fog_node", "--limit", "fog1")
    assert rc == 0 and again["changed"] == 0, again["hosts"]


def test_missing_group_is_refused(lab):
    bad = lab["tmp"] / "no-monitoring.ini"
    text = lab["inventory"].read_text().replace("[monitoring]\nlocalhost ansible_connection=local",
                                                "")
    bad.write_text(text.replace("monitoring\n", ""))
    done = cli(lab["env"], "deploy", "--inventory", str(bad))
    assert done.returncode == 2
    assert "missing group [monitoring]" in done.stderr


def test_unknown_host_key_and_unreachable_host_are_named(lab):
    """The SSH preflight (paramiko) refuses before Ansible starts, naming both hosts; with
    the preflight skipped, Ansible's own host key checking still refuses."""
    bad = lab["tmp"] / "bad-hosts.ini"
    empty = lab["tmp"] / "empty_known_hosts"
    empty.write_text("")
    text = lab["inventory"].read_text().replace(lab["ssh"]["known_hosts"], str(empty))
    # a fog node (so it has the lab's SSH settings) at a lab address where nothing answers
    text = text.replace("[fog_nodes]\n", "[fog_nodes]\nghost ansible_host=10.79.0.19\n")
    bad.write_text(text)
    args = ["deploy", "--inventory", str(bad), "--playbook", "fog_node", "--limit", "fog1,ghost"]
    started = time.monotonic()
    done = cli(lab["env"], *args, "--json")
    print(f"preflight refusal in {time.monotonic() - started:.1f} s: {done.stderr.strip()}")
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "ssh preflight failed, nothing applied" in done.stderr
    assert f"fog1: 10.79.0.11: unknown host key (not in {empty})" in done.stderr
    assert "ghost: 10.79.0.19: cannot connect over SSH" in done.stderr
    assert [f["host"] for f in json.loads(done.stdout)["failures"]] == ["fog1", "ghost"]
    assert empty.read_text() == ""  # nothing trusted without asking
    done = cli(lab["env"], *args, "--json", "--skip-ssh-preflight")
    assert done.returncode == 1
    assert "fog1: unreachable" in done.stderr and "Host key verification failed" in done.stderr
    assert "ghost: unreachable" in done.stderr


def test_trust_on_first_use_writes_the_key_once_then_it_is_verified(lab):
    """`host run --trust-on-first-use` accepts fog1's unknown key and writes exactly the key
    the node has; the next run is strict and passes; a deploy preflight then knows fog1 and
    still refuses fog2 until `deploy --trust-on-first-use`, after which Ansible (OpenSSH,
    StrictHostKeyChecking=yes) accepts the file paramiko wrote."""
    tofu = lab["tmp"] / "tofu_known_hosts"
    tofu.write_text("")
    inventory = lab["tmp"] / "tofu.ini"
    inventory.write_text(lab["inventory"].read_text().replace(lab["ssh"]["known_hosts"],
                                                              str(tofu)))
    run = ["host", "run", "--inventory", str(inventory)]
    refused = cli(lab["env"], *run, "fog1", "--", "true")
    assert refused.returncode == 2 and "fog1: 10.79.0.11: unknown host key" in refused.stderr
    first = cli(lab["env"], *run, "--trust-on-first-use", "fog1", "--",
                "ip", "-o", "-4", "addr", "show")
    assert first.returncode == 0, first.stderr
    assert "10.79.0.11/" in first.stdout  # ran inside fog1's namespace
    lab_keys = dict(line.split(" ", 1)
                    for line in Path(lab["ssh"]["known_hosts"]).read_text().splitlines())
    assert tofu.read_text() == f"10.79.0.11 {lab_keys['10.79.0.11']}\n"
    again = cli(lab["env"], *run, "fog1", "--", "cat", "/proc/sys/kernel/hostname")
    assert again.returncode == 0, again.stderr
    assert tofu.read_text().count("10.79.0.11") == 1  # verified, not written again
    deploy_args = ["deploy", "--inventory", str(inventory), "--playbook", "fog_node",
                   "--limit", "fog_nodes", "--check", "--json"]
    done = cli(lab["env"], *deploy_args)
    assert done.returncode == 2 and "fog2: 10.79.0.12: unknown host key" in done.stderr
    assert "fog1" not in done.stderr
    done = cli(lab["env"], *deploy_args, "--trust-on-first-use")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["ok"]
    assert sorted(tofu.read_text().splitlines()) == sorted(
        f"{a} {k}" for a, k in lab_keys.items())


def query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    data = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert data["status"] == "success", data
    return data["data"]["result"]


def value(base: str, expr: str) -> float | None:
    """The single value an expression returns now, None when it returns nothing."""
    result = query(base, expr)
    assert len(result) <= 1, (expr, result)
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def prometheus(lab, tmp_path_factory):
    """Debian's Prometheus on loopback with the config the playbook wrote (1 s scrapes),
    once every target (two host agents, the exporter) is up."""
    config = lab["mon"] / "prometheus" / "prometheus.yml"
    if not config.is_file():
        pytest.skip("deploy did not run")
    for target in ("10.79.0.11", "10.79.0.12"):
        check_destination(target, Lab(LabSpec(prefix=PREFIX, nodes=NODES, subnet=SUBNET),
                                      lab["tmp"] / "state").policy)
    port = free_port()
    tsdb = tmp_path_factory.mktemp("tsdb")
    prom = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={tsdb}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                up = query(base, "up == 1")
                if len(up) == 3 and query(base, "rate(edgeiot_core_link_bytes_total[1m])"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape all three targets"
            time.sleep(1)
        assert {r["metric"]["job"] for r in up} == {"edgeiot-host", "edgeiot-orchestrator"}
        yield base
    finally:
        prom.terminate()
        prom.wait(15)


MIGRATING_VM, CAP_MIB_S = "prom-vm", 5


def test_prometheus_sees_a_real_migration(lab, prometheus):
    """A 128 MiB guest dirtying memory, capped at 5 MiB/s (tens of seconds, 1 s scrapes):
    Prometheus saw its dirty rate and bandwidth while it ran, one more running migration
    than the seeded one, the completed counter go up, and the guest's per-domain series
    from the host agents of both nodes."""
    from orchestrator.fleet import lab_fleet
    from orchestrator.fog.guest_agent import GuestAgent
    from orchestrator.store import open_store

    env, base = lab["env"], prometheus
    completed = 'edgeiot_migrations_total{status="completed"}'
    assert value(base, completed) == 1.0  # the seeded migration
    made = cli(env, "vm", "create", MIGRATING_VM, "--node", "fog1", "--memory", "128",
               "--json")
    assert made.returncode == 0, made.stderr
    try:
        store = open_store(lab["tmp"] / "state")
        try:
            key = store.vm_key(MIGRATING_VM)
        finally:
            store.close()
        guest = GuestAgent(json.loads(made.stdout)["address"],
                           lab_fleet(lab["tmp"] / "state", PREFIX).policy, key=key)
        guest.wait_ready(30)
        guest.set_dirtier(pages_per_s=250, working_set_mib=8)  # a 128 MiB guest allows ~15 MiB
        time.sleep(3)  # a few scrapes of the guest on fog1 before it moves
        started = time.monotonic()
        moved = cli(env, "migrate", MIGRATING_VM, "--to", "fog2", "--bandwidth",
                    str(CAP_MIB_S), "--json")
        seconds = time.monotonic() - started
        assert moved.returncode == 0, moved.stderr
        record = json.loads(moved.stdout)
        assert record["status"] == "completed" and record["placement"] == ["fog2"]
        window = f"[{int(seconds) + 60}s]"
        deadline = time.monotonic() + 15  # the counter's next scrape
        while value(base, completed) != 2.0:
            assert time.monotonic() < deadline, "completed migrations never went up"
            time.sleep(0.5)
        selector = f'{{vm="{MIGRATING_VM}",source="fog1",destination="fog2"}}'
        dirty = value(base, "max_over_time(edgeiot_migration_dirty_rate_bytes_per_second"
                            f"{selector}{window})")
        bandwidth = value(base, "max_over_time(edgeiot_migration_bandwidth_bytes_per_second"
                                f"{selector}{window})")
        samples = value(base, "count_over_time(edgeiot_migration_bandwidth_bytes_per_second"
                              f"{selector}{window})")
        running = value(base, f"max_over_time(edgeiot_migrations_running{window})")
        went_up = value(base, f"max_over_time({completed}{window}) - "
                              f"min_over_time({completed}{window})")
        domains = query(base, "count by (node) (max_over_time(edgeiot_domain_memory_bytes"
                              f'{{domain="{MIGRATING_VM}"}}{window}))')
        cpu = query(base, f'edgeiot_domain_cpu_seconds_total{{domain="{MIGRATING_VM}"}}')
        print(f"migration {seconds:.1f} s ({record['total_time_ms']} ms, "
              f"{record['transferred_bytes']} bytes, {record['iterations']} iterations); "
              f"Prometheus: {samples} bandwidth samples, max dirty {dirty} B/s, max bandwidth "
              f"{bandwidth} B/s, max running {running}, completed +{went_up}, domain series "
              f"on {sorted(r['metric']['node'] for r in domains)}")
        assert samples is not None and samples >= 3, "fewer than 3 scrapes saw it running"
        assert dirty is not None and dirty > 0
        assert bandwidth is not None and bandwidth > 0
        assert running is not None and running >= 2  # the seeded one and this one
        assert value(base, "edgeiot_migrations_running") == 1.0  # this one is over
        assert went_up is not None and went_up >= 1
        assert {r["metric"]["node"] for r in domains} == {"fog1", "fog2"}
        assert [r["metric"]["node"] for r in cpu] == ["fog2"]
    finally:
        cli(env, "vm", "destroy", MIGRATING_VM)


def test_prometheus_scrapes_agents_and_exporter_and_dashboard_has_data(lab, prometheus):
    base = prometheus
    libvirt = query(base, "edgeiot_host_libvirt_up")
    assert {r["metric"]["node"]: r["value"][1] for r in libvirt} == {"fog1": "1", "fog2": "1"}
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    empty = [e for e in exprs if not query(base, e)]
    assert not empty, f"dashboard expressions without data: {empty}"


def tls_fleet_inventory(lab, pki: Path) -> Path:
    """The orchestrator's view of the deployed nodes: qemu+tls URIs with its client cert."""
    topology = Lab(LabSpec(prefix=PREFIX, nodes=NODES, subnet=SUBNET), lab["tmp"] / "state")
    image = lab["tmp"] / "state" / "labs" / PREFIX / "image"
    lines = ["[fog_nodes]"]
    for node in topology.topology.nodes:
        lines.append(f"{node.name} ansible_host={node.address} "
                     f"libvirt_uri=qemu+tls://{node.address}/system?pkipath={pki} "
                     f"image_dir={image} domain_type=qemu "
                     f"vm_network={topology.topology.vm_network} "
                     f"gateway={topology.topology.gateway}")
    path = lab["tmp"] / "tls-fleet.ini"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_tls_deployed_by_the_playbook_then_an_encrypted_verified_migration(lab):
    """Last in the module: it moves both nodes' libvirtd from plain TCP to TLS."""
    import libvirt

    env, state = lab["env"], lab["tmp"] / "state"
    tls_inventory = lab["tmp"] / "tls.ini"
    tls_inventory.write_text(lab["inventory"].read_text().replace(
        "[lab:vars]\n", "[lab:vars]\nlibvirt_tls=true\n"))
    done = cli(env, "deploy", "--inventory", str(tls_inventory), "--limit", "fog_nodes",
               "--json")
    assert done.returncode == 0, done.stderr
    for node in ("fog1", "fog2"):
        restarted = cli(env, "lab", "restart-libvirtd", node)
        assert restarted.returncode == 0, restarted.stderr
    address = "10.79.0.11"
    with pytest.raises(OSError):  # plain TCP is gone: only TLS listens
        socket.create_connection((address, 16509), timeout=2).close()
    pki = state / "pki" / "client"
    stranger = lab["tmp"] / "no-client-cert"
    stranger.mkdir()
    (stranger / "cacert.pem").write_text((pki / "cacert.pem").read_text())
    with pytest.raises(libvirt.libvirtError):  # no client certificate, no connection
        libvirt.open(f"qemu+tls://{address}/system?pkipath={stranger}")

    fleet = ["--inventory", str(tls_fleet_inventory(lab, pki))]
    made = cli(env, "vm", "create", "tls-vm", "--node", "fog1", "--memory", "128",
               "--wait", "0", *fleet)
    assert made.returncode == 0, made.stderr
    try:
        conn = libvirt.open(f"qemu+tls://{address}/system?pkipath={pki}")
        try:  # the nodes refuse a migration whose stream would not be encrypted
            with pytest.raises(libvirt.libvirtError, match="(?i)tls"):
                conn.lookupByName("tls-vm").migrateToURI3(
                    f"qemu+tls://10.79.0.12/system?pkipath={pki}", {},
                    libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER)
        finally:
            conn.close()
        moved = cli(env, "migrate", "tls-vm", "--to", "fog2", "--json", *fleet)
        assert moved.returncode == 0, moved.stderr
        record = json.loads(moved.stdout)
        assert record["status"] == "completed" and record["placement"] == ["fog2"]
        print(f"TLS migration: {record['total_time_ms']} ms, downtime "
              f"{record['downtime_ms']} ms, {record['transferred_bytes']} bytes")
    finally:
        cli(env, "vm", "destroy", "tls-vm", *fleet)
