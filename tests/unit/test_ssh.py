"""SSH runner: quoting, netguard before any socket, strict host keys, explicit TOFU; the
last tests talk to a real sshd on loopback (started here by pid, root only)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from orchestrator.errors import UnsafeDestination, UserError
from orchestrator.lab.sshd import known_hosts_line, sshd_config
from orchestrator.netguard import NetworkPolicy
from orchestrator.ssh import SshRunner, SshTarget, remote_command


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
    (d / "sshd_config").write_text(config.replace("Port 22", f"Port {port}"))
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
