"""Deploy logic on captured ansible-runner events: progress lines, per-host summary, failures
named by host and task, inventory checks. No Ansible run here (see the lab tier)."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.deploy import (
    check_groups,
    failure_of,
    known_hosts_file,
    network_hosts,
    play_hosts,
    progress_line,
    required_groups,
    ssh_target,
    ssh_targets,
    summarize,
)
from orchestrator.errors import UserError


def ev(kind: str, **data):
    return {"event": kind, "event_data": data}


EVENTS = [
    ev("playbook_on_play_start", play="fog nodes"),
    ev("playbook_on_task_start", task="libvirtd listens on the node's address only"),
    ev("runner_on_ok", host="fog1", task="libvirtd listens", res={"changed": True}),
    ev("runner_on_ok", host="fog2", task="libvirtd listens", res={"changed": False}),
    ev("runner_on_skipped", host="fog1", task="agent as a systemd service"),
    ev("runner_on_failed", host="fog2", task="refuse to go on without packages",
       res={"msg": "missing packages qemu-utils and edgeiot_install_packages is off"}),
    ev("runner_on_failed", host="fog1", task="probe", ignore_errors=True, res={"msg": "x"}),
    ev("runner_on_unreachable", host="fog3", task="which packages are installed",
       res={"msg": "Failed to connect to the host via ssh: Host key verification failed.",
            "unreachable": True}),
    ev("playbook_on_stats", ok={"fog1": 3, "fog2": 1}, changed={"fog1": 1},
       failures={"fog2": 1}, dark={"fog3": 1}, skipped={"fog1": 1}, ignored={"fog1": 1}),
]


def test_summary_counts_per_host_from_stats():
    summary = summarize(EVENTS)
    assert summary.hosts["fog1"].ok == 3 and summary.hosts["fog1"].changed == 1
    assert summary.hosts["fog2"].failed == 1
    assert summary.hosts["fog3"].unreachable == 1
    assert summary.changed == 1
    assert not summary.ok


def test_failures_name_host_and_task_and_ignore_ignored_errors():
    failures = [str(f) for f in summarize(EVENTS).failures]
    assert failures == [
        "fog2: task 'refuse to go on without packages' failed: missing packages qemu-utils "
        "and edgeiot_install_packages is off",
        "fog3: unreachable: Failed to connect to the host via ssh: Host key verification "
        "failed.",
    ]


def test_second_run_without_changes_is_ok():
    stats = ev("playbook_on_stats", ok={"fog1": 9, "localhost": 7}, changed={}, failures={},
               dark={}, skipped={"fog1": 13})
    summary = summarize([stats])
    assert summary.ok and summary.changed == 0
    assert summary.as_dict()["hosts"]["fog1"]["skipped"] == 13


def test_failure_message_from_a_loop_and_from_stderr():
    loop = ev("runner_on_failed", host="h", task="t",
              res={"results": [{"failed": False}, {"failed": True, "msg": "item broke"}]})
    assert failure_of(loop).message == "item broke"
    cmd = ev("runner_on_failed", host="h", task="t", res={"rc": 2, "stderr": "a\nlast line"})
    assert failure_of(cmd).message == "last line"
    assert failure_of(ev("runner_on_ok", host="h")) is None


def test_progress_lines():
    lines = [progress_line(e) for e in EVENTS]
    assert lines[0] == "PLAY fog nodes"
    assert lines[1].strip().startswith("TASK libvirtd")
    assert lines[2].strip() == "changed: fog1" and lines[3].strip() == "ok: fog2"
    assert lines[5].strip().startswith("FAILED: fog2: missing packages")
    assert lines[6].strip() == "failed (ignored): fog1"
    assert lines[7].strip().startswith("UNREACHABLE: fog3")
    assert lines[8] is None


INVENTORY = {
    "_meta": {"hostvars": {"fog1": {"ansible_host": "10.79.0.11"},
                           "localhost": {"ansible_connection": "local"}}},
    "all": {"children": ["ungrouped", "fog_nodes", "monitoring", "cloud"]},
    "fog_nodes": {"hosts": ["fog1"]},
    "monitoring": {"hosts": ["localhost"]},
    "cloud": {},
}


def test_missing_or_empty_group_is_refused_by_name():
    check_groups(INVENTORY, ["fog_nodes", "monitoring"], "inv.ini")
    with pytest.raises(UserError, match=r"inv.ini: missing group \[orchestrator\]"):
        check_groups(INVENTORY, required_groups("site"), "inv.ini")
    with pytest.raises(UserError, match=r"group \[cloud\] has no hosts"):
        check_groups(INVENTORY, ["cloud"], "inv.ini")
    with pytest.raises(UserError, match="unknown playbook"):
        required_groups("nope")


def test_network_hosts_skip_local_connections():
    assert network_hosts(INVENTORY) == {"fog1": "10.79.0.11"}


def test_play_hosts_follow_the_playbooks_plays_and_the_limit():
    inventory = {"all": {"children": ["fog_nodes", "cloud", "orchestrator"]},
                 "fog_nodes": {"hosts": ["fog1", "fog2"]}, "cloud": {"hosts": ["c1"]},
                 "orchestrator": {"hosts": ["localhost"]}, "monitoring": {"hosts": ["fog1"]}}
    assert play_hosts(inventory, "fog_node") == ["fog1", "fog2", "c1"]
    assert play_hosts(inventory, "site") == ["fog1", "fog2", "c1", "localhost"]
    assert play_hosts(inventory, "monitoring") == ["fog1"]


def test_known_hosts_file_from_ansible_ssh_args():
    assert known_hosts_file("-o UserKnownHostsFile=/k/h -o StrictHostKeyChecking=yes") == "/k/h"
    assert known_hosts_file("-oUserKnownHostsFile=/a -C") == "/a"
    assert known_hosts_file("-o 'UserKnownHostsFile /b /c'") == "/b"
    assert known_hosts_file("-o StrictHostKeyChecking=yes") is None
    assert known_hosts_file("") is None


def test_ssh_target_is_what_ansible_would_use(tmp_path):
    hv = {"ansible_host": "10.79.0.11", "ansible_user": "root", "ansible_port": "2222",
          "ansible_ssh_private_key_file": "/lab/id_ed25519",
          "ansible_ssh_common_args": "-o UserKnownHostsFile=/lab/known_hosts "
                                     "-o StrictHostKeyChecking=yes"}
    target = ssh_target("fog1", hv, trust_on_first_use=True)
    assert (target.host, target.user, target.port) == ("10.79.0.11", "root", 2222)
    assert target.key_file == Path("/lab/id_ed25519")
    assert target.known_hosts == Path("/lab/known_hosts") and target.trust_on_first_use
    bare = ssh_target("h", {}, default_user="ops")
    assert (bare.host, bare.user, bare.port, bare.key_file) == ("h", "ops", 22, None)
    assert bare.known_hosts == Path("~/.ssh/known_hosts").expanduser()
    assert not bare.trust_on_first_use


def test_ssh_targets_skip_hosts_not_reached_over_ssh():
    inventory = {"_meta": {"hostvars": {"localhost": {"ansible_connection": "local"},
                                        "fog1": {"ansible_host": "10.0.0.1"}}}}
    assert list(ssh_targets(inventory, ["localhost", "fog1"])) == ["fog1"]


def test_the_exporter_service_listens_where_prometheus_scrapes():
    """Real hosts: the orchestrator role's unit runs `metrics serve` on ansible_host and the
    port the monitoring role's scrape target uses; the lab keeps its own exporter."""
    import jinja2
    import yaml

    from orchestrator.commands.metrics import parse_listen
    from orchestrator.deploy import ANSIBLE_DIR

    roles = ANSIBLE_DIR / "roles"
    orch = yaml.safe_load((roles / "orchestrator/defaults/main.yml").read_text())
    mon = yaml.safe_load((roles / "monitoring/defaults/main.yml").read_text())
    assert orch["orchestrator_metrics_port"] == mon["orchestrator_metrics_port"]
    assert "ansible_host" in orch["orchestrator_metrics_address"]
    assert "orchestrator_metrics_address" in mon["orchestrator_metrics_target"]
    assert orch["orchestrator_metrics_service"].startswith("{{ 'none' if edgeiot_lab_mode")
    unit = jinja2.Template(
        (roles / "orchestrator/templates/edgeiot-orchestrator-metrics.service.j2").read_text()
    ).render(ansible_managed="managed", orchestrator_bin="/opt/edgeiot/venv/bin/orchestrator",
             orchestrator_state_dir="/var/lib/edgeiot", orchestrator_metrics_address="10.0.0.5",
             orchestrator_metrics_port=9177)
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = exec_start.removeprefix("ExecStart=").split()
    assert argv[:3] == ["/opt/edgeiot/venv/bin/orchestrator", "--state-dir", "/var/lib/edgeiot"]
    assert argv[3:6] == ["metrics", "serve", "--listen"]
    assert parse_listen(argv[6]) == ("10.0.0.5", 9177)
    tasks = yaml.safe_load((roles / "orchestrator/tasks/main.yml").read_text())
    service = [t for t in tasks if "edgeiot-orchestrator-metrics" in str(t)]
    assert len(service) == 2
    assert all("orchestrator_metrics_service == 'systemd'" in t["when"] for t in service)


def test_playbooks_pass_ansible_syntax_check():
    import subprocess
    import sys

    from orchestrator.deploy import ANSIBLE_DIR

    inventory = ANSIBLE_DIR.parent / "inventory.example.ini"
    done = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"),
                           "--syntax-check", "-i", str(inventory), str(ANSIBLE_DIR / "site.yml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_a_check_run_does_not_leave_later_runs_in_check_mode(tmp_path, monkeypatch):
    """ansible-runner reads env/cmdline back when a run gives none: a real run after a
    `--check` run must still apply (real ansible-runner, a local-only playbook)."""
    import orchestrator.deploy as deploy

    target = tmp_path / "applied.txt"
    books = tmp_path / "ansible"
    books.mkdir()
    (books / "site.yml").write_text(
        "- hosts: all\n  gather_facts: false\n  tasks:\n"
        f"    - ansible.builtin.copy: {{content: applied, dest: {target}}}\n")
    inventory = tmp_path / "inv.ini"
    inventory.write_text("localhost ansible_connection=local\n")
    monkeypatch.setattr(deploy, "ANSIBLE_DIR", books)
    private = tmp_path / "private"
    checked, status = deploy.run_playbook(
        deploy.DeployRequest(str(inventory), check=True), private, lambda e: None)
    assert status == "successful" and checked.changed == 1 and not target.exists()
    applied, status = deploy.run_playbook(
        deploy.DeployRequest(str(inventory)), private, lambda e: None)
    assert status == "successful" and applied.changed == 1
    assert target.read_text() == "applied"
