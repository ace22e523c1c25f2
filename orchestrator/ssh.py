"""The command runner over SSH (paramiko), for the orchestrator's own commands on fog hosts.

Safe by default: the destination passes `netguard.check_destination` before any socket is
opened, and the host key must already be in the given known_hosts file (paramiko's
RejectPolicy). Trust on first use is an explicit choice (`trust_on_first_use=True`, meant
for a lab): an unknown key is then accepted *and written* to known_hosts, so the next
connection is strict again. argv is quoted with `shlex.join`, so no argument is ever
re-parsed by the remote shell.

`preflight` checks a set of hosts at once (reachability, host key, login, one command) and
returns what failed per host; `orchestrator deploy` runs it before Ansible touches anything,
`orchestrator host run` uses the runner for ad-hoc commands.
"""

from __future__ import annotations

import fcntl
import shlex
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.netguard import NetworkPolicy, check_destination
from orchestrator.runner import CommandResult


@dataclass(frozen=True)
class SshTarget:
    host: str
    known_hosts: Path
    user: str = "root"
    port: int = 22
    key_file: Path | None = None
    trust_on_first_use: bool = False
    connect_timeout_s: float = 10.0


_APPEND_LOCK = threading.Lock()


class _RememberPolicy(paramiko.MissingHostKeyPolicy):
    """Trust on first use: accept an unknown key and append it to the known_hosts file.

    Appended under a lock (threads) and flock (processes), never rewritten: parallel first
    connections to several hosts keep every key, and existing (hashed) lines stay as they are.
    """

    def __init__(self, known_hosts: Path) -> None:
        self.known_hosts = known_hosts

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str,
                         key: paramiko.PKey) -> None:
        client.get_host_keys().add(hostname, key.get_name(), key)
        line = HostKeyEntry([hostname], key).to_line()
        self.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        with _APPEND_LOCK, self.known_hosts.open("a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            f.write(("" if not text or text.endswith("\n") else "\n") + line)


def remote_command(argv: Sequence[str]) -> str:
    """The one string sent to the remote shell; pure."""
    if not argv:
        raise UserError("empty command")
    return shlex.join(argv)


@dataclass
class SshRunner:
    """Implements the runner protocol (`orchestrator.runner.Runner`) over one SSH connection,
    opened lazily and reused; close() ends it (also usable as a context manager)."""

    target: SshTarget
    policy: NetworkPolicy
    _client: paramiko.SSHClient | None = field(default=None, repr=False)

    def __enter__(self) -> SshRunner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def connect(self) -> paramiko.SSHClient:
        if self._client is not None:
            return self._client
        t = self.target
        address = check_destination(t.host, self.policy)
        client = paramiko.SSHClient()
        if t.known_hosts.exists():
            client.load_host_keys(str(t.known_hosts))
        elif not t.trust_on_first_use:
            raise UserError(f"{t.host}: known_hosts file {t.known_hosts} does not exist")
        client.set_missing_host_key_policy(
            _RememberPolicy(t.known_hosts) if t.trust_on_first_use else paramiko.RejectPolicy())
        try:
            client.connect(address, port=t.port, username=t.user,
                           key_filename=str(t.key_file) if t.key_file else None,
                           timeout=t.connect_timeout_s, banner_timeout=t.connect_timeout_s,
                           auth_timeout=t.connect_timeout_s, allow_agent=False,
                           look_for_keys=t.key_file is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise UserError(f"{t.host}: host key does not match {t.known_hosts} "
                            f"(got {exc.key.get_name()}): refusing to connect") from exc
        except paramiko.SSHException as exc:
            client.close()
            if "not found in known_hosts" in str(exc):
                raise UserError(f"{t.host}: unknown host key (not in {t.known_hosts}); "
                                "add it, or trust on first use in a lab") from exc
            raise OrchestratorError(f"{t.host}: ssh: {exc}") from exc
        except (TimeoutError, OSError) as exc:
            client.close()
            raise OrchestratorError(f"{t.host}: cannot connect over SSH: {exc}") from exc
        self._client = client
        return client

    def run(self, argv: Sequence[str], *, check: bool = True,
            timeout: float | None = 60.0) -> CommandResult:
        command = remote_command(argv)
        client = self.connect()
        try:
            _stdin, stdout, stderr = client.exec_command(command, timeout=timeout)
            _stdin.close()
            out = stdout.read().decode(errors="replace")
            err = stderr.read().decode(errors="replace")
            rc = stdout.channel.recv_exit_status()
        except TimeoutError as exc:
            raise OrchestratorError(f"{self.target.host}: {command}: timed out after "
                                    f"{timeout} s") from exc
        except paramiko.SSHException as exc:
            self.close()
            raise OrchestratorError(f"{self.target.host}: {command}: {exc}") from exc
        result = CommandResult(tuple(argv), rc, out, err)
        return result.check() if check else result


def preflight(targets: Mapping[str, SshTarget], policy: NetworkPolicy,
              argv: Sequence[str] = ("true",), workers: int = 8) -> dict[str, str]:
    """Connect to every target (in parallel), verify its host key, log in and run argv.

    Returns name → one-line reason for each target that failed, empty when all passed.
    """
    def probe(item: tuple[str, SshTarget]) -> tuple[str, str | None]:
        name, target = item
        try:
            with SshRunner(target, policy) as runner:
                runner.run(argv, timeout=max(target.connect_timeout_s, 10.0))
        except (OrchestratorError, paramiko.SSHException, OSError, EOFError) as exc:
            return name, " ".join(str(exc).split()) or type(exc).__name__
        return name, None

    if not targets:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        results = list(pool.map(probe, sorted(targets.items())))
    return {name: reason for name, reason in results if reason is not None}
