"""SSH runner: quoting, netguard before any socket, strict host keys, explicit TOFU; the
last tests talk to a real sshd on loopback (started here by pid, root only)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.deploy import DeploySummary
from orchestrator.errors import ExitStatus, UnsafeDestination, UserError
from orchestrator.lab.sshd import known_hosts_line, sshd_config
from orchestrator.netguard import NetworkPolicy
from orchestrator.ssh import SshRunner, SshTarget, preflight, remote_command


def test_argv_is_quoted_for_the_remote_shell():
    assert remote_command(["echo", "a b", "$(id)", "x;y"]) == "echo 'a b' '$(id)' 'x;y'"
    with pytest.raises(UserError):
        remote_command([])


def test_netguard_refuses_before_connecting(tmp_path):
    runner = SshRunner(SshTarget("192.0.2.7", tmp_path / "known_hosts"), NetworkPolicy())
    with pytest.raises(UnsafeDestination):
        runner.run(["true"])


def test_missing_known_hosts_is_refused_without_tofu(tmp_path):
    runner = SshRunner(SshTarget("127.0.0.1", tmp_path / "absent"), NetworkPolicy())
    with pytest.raises(UserError, match="known_hosts file"):
        runner.run(["true"])


def test_known_hosts_line_and_config_are_pure():
    assert known_hosts_line("10.77.0.11", "ssh-ed25519 AAAAC3 fog1\n") \
        == "10.77.0.11 ssh-ed25519 AAAAC3"
    config = sshd_config("10.77.0.11", Path("/k"), Path("/p"), Path("/a"))
    assert "ListenAddress 10.77.0.11" in config and "PasswordAuthentication no" in config


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root and sshd")
    d = tmp_path_factory.mktemp("sshd")
    for name in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)],
                       check=True)
    (d / "authorized_keys").write_text((d / "client.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = sshd_config("127.0.0.1", d / "host", d / "sshd.pid", d / "authorized_keys")
    # a second loopback address: two "hosts" for the parallel trust-on-first-use test
    (d / "sshd_config").write_text(config.replace("Port 22", f"Port {port}")
                                   + "ListenAddress 127.0.0.2\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-f", str(d / "sshd_config"),
                             "-E", str(d / "log")])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        known = d / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} " + " ".join(
            (d / "host.pub").read_text().split()[:2]) + "\n")
        yield d, port, known
    finally:
        proc.terminate()
        proc.wait(10)


def target(sshd, known, tofu=False):
    d, port, _ = sshd
    return SshTarget("127.0.0.1", known, port=port, key_file=d / "client",
                     trust_on_first_use=tofu)


def test_runs_commands_against_a_known_host(sshd):
    with SshRunner(target(sshd, sshd[2]), NetworkPolicy()) as runner:
        result = runner.run(["sh", "-c", 'printf "%s" "$1"', "-", "a b;c"])
        assert result.stdout == "a b;c" and result.rc == 0
        assert runner.run(["sh", "-c", "exit 3"], check=False).rc == 3


def test_unknown_host_key_is_rejected_unless_trusted_on_first_use(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(UserError, match="unknown host key"):
        SshRunner(target(sshd, empty), NetworkPolicy()).run(["true"])
    with SshRunner(target(sshd, empty, tofu=True), NetworkPolicy()) as runner:
        assert runner.run(["true"]).ok
    assert "ssh-ed25519" in empty.read_text()  # remembered: strict from now on
    with SshRunner(target(sshd, empty), NetworkPolicy()) as runner:
        assert runner.run(["true"]).ok


def test_a_changed_host_key_is_refused(sshd, tmp_path):
    d, port, _ = sshd
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "o")],
                   check=True)
    wrong = tmp_path / "known_hosts"
    wrong.write_text(f"[127.0.0.1]:{port} " + " ".join(
        (tmp_path / "o.pub").read_text().split()[:2]) + "\n")
    with pytest.raises(UserError, match="does not match"):
        SshRunner(target(sshd, wrong), NetworkPolicy()).run(["true"])


def test_preflight_names_each_failing_host_and_tofu_keeps_every_key(sshd, tmp_path):
    d, port, known = sshd
    empty = tmp_path / "known_hosts"
    empty.write_text("# kept\n")
    targets = {"good": target(sshd, known), "stranger": target(sshd, empty)}
    failed = preflight(targets, NetworkPolicy())
    assert list(failed) == ["stranger"] and "unknown host key" in failed["stranger"]
    # two hosts trusted on first use at once (same file): both keys appended, nothing lost
    other = SshTarget("127.0.0.2", empty, port=port, key_file=d / "client",
                      trust_on_first_use=True)
    assert preflight({"a": target(sshd, empty, tofu=True), "b": other}, NetworkPolicy()) == {}
    lines = empty.read_text().splitlines()
    assert lines[0] == "# kept" and {line.split()[0] for line in lines[1:]} == {
        f"[127.0.0.1]:{port}", f"[127.0.0.2]:{port}"}


def test_preflight_tofu_writes_the_key_once_then_is_strict(sshd, tmp_path):
    fresh = tmp_path / "sub" / "known_hosts"  # does not exist yet
    assert preflight({"h": target(sshd, fresh, tofu=True)}, NetworkPolicy()) == {}
    assert preflight({"h": target(sshd, fresh)}, NetworkPolicy()) == {}
    assert len(fresh.read_text().splitlines()) == 1


def inventory_for(sshd, known: Path, path: Path) -> Path:
    d, port, _ = sshd
    path.write_text(
        "[fog_nodes]\n"
        f"loop ansible_host=127.0.0.1 ansible_port={port} ansible_user=root "
        f"ansible_ssh_private_key_file={d / 'client'} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes'\n"
        "[orchestrator]\nlocalhost ansible_connection=local\n"
        "[monitoring]\nlocalhost ansible_connection=local\n")
    return path


def test_host_run_over_the_inventory(sshd, tmp_path, capsys):
    inventory = inventory_for(sshd, sshd[2], tmp_path / "inv.ini")
    state = ["--state-dir", str(tmp_path / "state")]
    assert main([*state, "host", "run", "--inventory", str(inventory), "loop", "--",
                 "sh", "-c", 'echo "$1"; echo err >&2', "-", "a b;c"]) == ExitStatus.SUCCESS
    out = capsys.readouterr()
    assert out.out == "a b;c\n" and out.err == "err\n"
    assert main([*state, "host", "run", "--inventory", str(inventory), "loop", "--",
                 "sh", "-c", "exit 4"]) == ExitStatus.ERROR
    assert "loop: sh -c exit 4: exit status 4" in capsys.readouterr().err
    assert main([*state, "host", "run", "--inventory", str(inventory), "nowhere", "--",
                 "true"]) == ExitStatus.BAD_INPUT


def test_host_run_refuses_an_unknown_key_unless_trusted_on_first_use(sshd, tmp_path, capsys):
    known = tmp_path / "known_hosts"
    known.write_text("")
    inventory = inventory_for(sshd, known, tmp_path / "inv.ini")
    args = ["--state-dir", str(tmp_path / "state"), "host", "run", "--inventory",
            str(inventory)]
    assert main([*args, "loop", "--", "true"]) == ExitStatus.BAD_INPUT
    assert "loop: 127.0.0.1: unknown host key" in capsys.readouterr().err
    assert main([*args, "--trust-on-first-use", "loop", "--", "true"]) == ExitStatus.SUCCESS
    assert "ssh-ed25519" in known.read_text()
    assert main([*args, "loop", "--", "true"]) == ExitStatus.SUCCESS


def test_deploy_preflight_refuses_before_ansible_runs(sshd, tmp_path, capsys, monkeypatch):
    ran = []
    monkeypatch.setattr("orchestrator.commands.deploy.run_playbook",
                        lambda *a: ran.append(a) or (DeploySummary(), "successful"))
    known = tmp_path / "known_hosts"
    known.write_text("")
    inventory = inventory_for(sshd, known, tmp_path / "inv.ini")
    args = ["--state-dir", str(tmp_path / "state"), "deploy", "--inventory", str(inventory),
            "--playbook", "fog_node"]
    assert main(args) == ExitStatus.BAD_INPUT
    err = capsys.readouterr().err
    assert "ssh preflight failed, nothing applied: loop: 127.0.0.1: unknown host key" in err
    assert len(err.strip().splitlines()) == 1 and not ran
    assert main([*args, "--trust-on-first-use"]) == ExitStatus.SUCCESS and len(ran) == 1
    assert "SSH preflight: 1 host(s) ok" in capsys.readouterr().out
    assert main(args) == ExitStatus.SUCCESS and len(ran) == 2  # strict now, key known
    assert main([*args, "--limit", "localhost"]) == ExitStatus.SUCCESS  # nothing over SSH
