"""Running the Ansible playbooks (`ansible/`) through ansible-runner.

The only module that imports ansible_runner. Before anything runs, the inventory is read by
Ansible itself (`ansible-inventory --list`): the groups the chosen playbooks need must exist
and be non-empty, and every host that is reached over the network passes
`netguard.check_destination` (a lab address only through its lab's bridge). Runner events
become plain dicts; what a run means (progress lines, the per-host summary, which host failed
in which task) is computed from them by pure functions, tested on captured events.

Before ansible-runner starts, `ssh_targets` turns the hosts the playbook will touch (after
--limit) into `ssh.SshTarget`s, with the address, user, port, key and known_hosts file that
Ansible itself would use, so the command can check each of them over paramiko first.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shlex
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.errors import OrchestratorError, UserError
from orchestrator.netguard import NetworkPolicy, check_destination
from orchestrator.runner import LocalRunner, Runner
from orchestrator.ssh import SshTarget

ANSIBLE_DIR = Path(__file__).resolve().parents[1] / "ansible"
PLAYBOOKS: dict[str, tuple[str, ...]] = {
    # name → groups that must exist and hold at least one host
    "fog_node": ("fog_nodes",),
    "orchestrator": ("orchestrator",),
    "monitoring": ("monitoring",),
    "site": ("fog_nodes", "orchestrator", "monitoring"),
}
# playbook → groups its plays run on (fog_node.yml also covers cloud hosts)
PLAY_GROUPS: dict[str, tuple[str, ...]] = {
    "fog_node": ("fog_nodes", "cloud"),
    "orchestrator": ("orchestrator",),
    "monitoring": ("monitoring",),
    "site": ("fog_nodes", "cloud", "orchestrator", "monitoring"),
}
DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"
PYTHON = "/usr/bin/python3"  # NOTE: interpreter discovery finds a pyenv shim on these hosts
STAT_KEYS = {"ok": "ok", "changed": "changed", "failures": "failed", "dark": "unreachable",
             "skipped": "skipped", "rescued": "rescued", "ignored": "ignored"}

Event = dict[str, Any]


@dataclass
class HostSummary:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0
    rescued: int = 0
    ignored: int = 0


@dataclass
class Failure:
    host: str
    task: str
    message: str
    unreachable: bool = False

    def __str__(self) -> str:
        kind = "unreachable" if self.unreachable else f"task {self.task!r} failed"
        return f"{self.host}: {kind}: {self.message}"


@dataclass
class DeploySummary:
    hosts: dict[str, HostSummary] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures and not any(h.failed or h.unreachable
                                             for h in self.hosts.values())

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "changed": self.changed,
                "hosts": {n: vars(h) for n, h in sorted(self.hosts.items())},
                "failures": [vars(f) for f in self.failures]}


# --- pure: events → meaning ---------------------------------------------------------------

def _message(res: dict[str, Any]) -> str:
    items = [r for r in res.get("results") or []
             if isinstance(r, dict) and (r.get("failed") or r.get("unreachable"))]
    if items:  # a loop: its own msg is only "All items completed"
        return _message(items[0])
    for key in ("msg", "stderr", "reason"):
        text = res.get(key)
        if text:
            lines = str(text).strip().splitlines()
            return lines[-1] if key == "stderr" else " ".join(str(text).split())[:300]
    return f"rc={res['rc']}" if "rc" in res else "failed"


def failure_of(event: Event) -> Failure | None:
    """The failure an event reports, if any (ignored errors are not failures)."""
    kind = event.get("event")
    data = event.get("event_data", {})
    if kind == "runner_on_failed" and not data.get("ignore_errors"):
        return Failure(data.get("host", "?"), data.get("task", "?"),
                       _message(data.get("res", {})))
    if kind == "runner_on_unreachable":
        return Failure(data.get("host", "?"), data.get("task", "?"),
                       _message(data.get("res", {})), unreachable=True)
    return None


def progress_line(event: Event) -> str | None:
    """One line of task progress for a runner event, or None for events not worth a line."""
    kind = event.get("event")
    data = event.get("event_data", {})
    if kind == "playbook_on_play_start":
        return f"PLAY {data.get('play', '')}"
    if kind == "playbook_on_task_start":
        return f"  TASK {data.get('task', '')}"
    host = data.get("host", "?")
    if kind == "runner_on_ok":
        return f"    {'changed' if data.get('res', {}).get('changed') else 'ok'}: {host}"
    if kind == "runner_on_skipped":
        return f"    skipped: {host}"
    failure = failure_of(event)
    if failure is not None:
        return f"    {'UNREACHABLE' if failure.unreachable else 'FAILED'}: {host}: " \
               f"{failure.message}"
    if kind == "runner_on_failed":
        return f"    failed (ignored): {host}"
    return None


def summarize(events: Iterable[Event]) -> DeploySummary:
    """Per-host counts from the final stats event(s), and every failure with host and task."""
    summary = DeploySummary()
    for event in events:
        failure = failure_of(event)
        if failure is not None:
            summary.failures.append(failure)
        if event.get("event") == "playbook_on_stats":
            data = event.get("event_data", {})
            for key, attr in STAT_KEYS.items():
                for host, count in (data.get(key) or {}).items():
                    host_summary = summary.hosts.setdefault(host, HostSummary())
                    setattr(host_summary, attr, getattr(host_summary, attr) + int(count))
    for failure in summary.failures:  # a host that failed before any stats still shows
        summary.hosts.setdefault(failure.host, HostSummary())
    return summary


def required_groups(playbook: str) -> tuple[str, ...]:
    try:
        return PLAYBOOKS[playbook]
    except KeyError:
        raise UserError(f"unknown playbook {playbook!r} (known: {', '.join(PLAYBOOKS)})") \
            from None


def check_groups(inventory: dict[str, Any], groups: Iterable[str], source: str) -> None:
    """Refuse an inventory (as `ansible-inventory --list` prints it) lacking a group."""
    for group in groups:
        if group not in inventory:
            raise UserError(f"{source}: missing group [{group}]")
        if not _group_hosts(inventory, group):
            raise UserError(f"{source}: group [{group}] has no hosts")


def _group_hosts(inventory: dict[str, Any], group: str) -> list[str]:
    entry = inventory.get(group, {})
    hosts = list(entry.get("hosts", []))
    for child in entry.get("children", []):
        hosts += _group_hosts(inventory, child)
    return hosts


def network_hosts(inventory: dict[str, Any]) -> dict[str, str]:
    """host name → address Ansible will connect to, for every host not reached locally."""
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    found = {}
    for host in _group_hosts(inventory, "all") + inventory.get("ungrouped", {}).get("hosts", []):
        hv = hostvars.get(host, {})
        if hv.get("ansible_connection") == "local":
            continue
        found[host] = str(hv.get("ansible_host", host))
    return found


def play_hosts(inventory: dict[str, Any], playbook: str) -> list[str]:
    """Hosts the playbook's plays run on, in inventory order, each once."""
    found: list[str] = []
    for group in PLAY_GROUPS.get(playbook, ()):
        found += [h for h in _group_hosts(inventory, group) if h not in found]
    return found


_KNOWN_HOSTS_OPTION = re.compile(r"^-o\s*UserKnownHostsFile\s*=?\s*(.+)$", re.IGNORECASE)


def known_hosts_file(ssh_args: str) -> str | None:
    """The first file of `-o UserKnownHostsFile=...` in Ansible's ssh arguments; pure."""
    words = shlex.split(ssh_args)
    for i, word in enumerate(words):
        option = f"{word} {words[i + 1]}" if word == "-o" and i + 1 < len(words) else word
        match = _KNOWN_HOSTS_OPTION.match(option)
        if match:
            return match.group(1).split()[0]
    return None


def ssh_target(host: str, hostvars: dict[str, Any], trust_on_first_use: bool = False,
               default_user: str | None = None) -> SshTarget:
    """How Ansible would reach this host over SSH, as an SshTarget; pure."""
    args = " ".join(str(hostvars.get(k) or "") for k in
                    ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    known = known_hosts_file(args) or DEFAULT_KNOWN_HOSTS
    key = hostvars.get("ansible_ssh_private_key_file") or hostvars.get("ansible_private_key_file")
    return SshTarget(
        host=str(hostvars.get("ansible_host") or host),
        known_hosts=Path(known).expanduser(),
        user=str(hostvars.get("ansible_user") or hostvars.get("ansible_ssh_user")
                 or default_user or getpass.getuser()),
        port=int(hostvars.get("ansible_port") or hostvars.get("ansible_ssh_port") or 22),
        key_file=Path(str(key)).expanduser() if key else None,
        trust_on_first_use=trust_on_first_use,
    )


def ssh_targets(inventory: dict[str, Any], hosts: Iterable[str],
                trust_on_first_use: bool = False) -> dict[str, SshTarget]:
    """name → SshTarget for each of these hosts that Ansible reaches over SSH."""
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    targets = {}
    for host in hosts:
        hv = hostvars.get(host, {})
        if hv.get("ansible_connection", "ssh") not in ("ssh", "paramiko", "smart"):
            continue  # local, docker, ...: not ours to check
        targets[host] = ssh_target(host, hv, trust_on_first_use)
    return targets


# --- effects -----------------------------------------------------------------------------

def tool_env() -> dict[str, str]:
    """Environment for Ansible's tools: this venv's bin first on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    if bin_dir not in path.split(os.pathsep):
        path = bin_dir + os.pathsep + path
    return {**os.environ, "PATH": path, "ANSIBLE_PYTHON_INTERPRETER": PYTHON,
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0"}


def read_inventory(path: str, runner: Runner | None = None,
                   limit: str | None = None) -> dict[str, Any]:
    """The inventory as Ansible reads it; with a limit, only the hosts it selects."""
    if not Path(path).is_file():
        raise UserError(f"cannot read inventory {path}")
    result = (runner or LocalRunner()).run(
        [str(Path(sys.executable).parent / "ansible-inventory"), "-i", path, "--list",
         *(["--limit", limit] if limit else [])],
        check=False, timeout=60)
    if not result.ok:
        raise UserError(f"{path}: ansible cannot parse it: {result.stderr.strip()[-300:]}")
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except ValueError as exc:
        raise OrchestratorError(f"ansible-inventory printed no JSON for {path}") from exc
    return data


def check_destinations(hosts: dict[str, str], policy: NetworkPolicy) -> None:
    for host, address in sorted(hosts.items()):
        try:
            check_destination(address, policy)
        except UserError as exc:
            raise UserError(f"host {host}: {exc}") from exc


@dataclass(frozen=True)
class DeployRequest:
    inventory: str
    playbook: str = "site"
    limit: str | None = None
    check: bool = False


def run_playbook(request: DeployRequest, private_dir: Path,
                 on_event: Callable[[Event], None]) -> tuple[DeploySummary, str]:
    """Run one playbook; returns the summary and ansible-runner's final status."""
    import ansible_runner  # only here: the rest of the module is testable without it

    env = tool_env()
    os.environ["PATH"] = env["PATH"]  # NOTE: ansible-runner looks up ansible-playbook here
    private_dir.mkdir(parents=True, exist_ok=True)
    # NOTE: ansible-runner saves the cmdline it is given to env/cmdline and *reads that file
    # back* on any later run given none: after one `--check`, every later deploy would run
    # in check mode and report success having applied nothing. No stale run options, then.
    for stale in ("cmdline", "extravars", "envvars"):
        (private_dir / "env" / stale).unlink(missing_ok=True)
    events: list[Event] = []

    def handler(event: Event) -> bool:
        events.append(event)
        on_event(event)
        return True

    # NOTE: a fresh SSH control-socket directory per run: a master connection left by an
    # earlier run (ControlPersist) would otherwise skip host key verification entirely.
    control_dir = tempfile.mkdtemp(prefix="eiot-cp-")  # short: unix socket paths are ≤107
    try:
        result = _run(ansible_runner, request, private_dir, env, control_dir, handler)
    finally:
        shutil.rmtree(control_dir, ignore_errors=True)
    summary = summarize(events)
    if result.status != "successful" and summary.ok:
        # e.g. a syntax error: no task ran, so no host is to blame
        tail = (result.stdout.read() if result.stdout else "").strip().splitlines()[-3:]
        summary.failures.append(Failure("-", "-", f"ansible-runner {result.status} "
                                        f"(rc {result.rc}): {' '.join(tail)[:300]}"))
    return summary, str(result.status)


def _run(ansible_runner: Any, request: DeployRequest, private_dir: Path, env: dict[str, str],
         control_dir: str, handler: Callable[[Event], bool]) -> Any:
    keys = ("PATH", "ANSIBLE_PYTHON_INTERPRETER", "ANSIBLE_NOCOLOR", "ANSIBLE_RETRY_FILES_ENABLED")
    return ansible_runner.run(
        private_data_dir=str(private_dir),
        playbook=str(ANSIBLE_DIR / f"{request.playbook}.yml"),
        inventory=str(Path(request.inventory).resolve()),
        limit=request.limit,
        cmdline="--check --diff" if request.check else None,
        # NOTE: ansible-runner turns host key checking *off* unless told otherwise.
        envvars={**{k: env[k] for k in keys}, "ANSIBLE_SSH_CONTROL_PATH_DIR": control_dir,
                 "ANSIBLE_HOST_KEY_CHECKING": "True"},
        extravars={"ansible_python_interpreter": PYTHON},
        event_handler=handler,
        quiet=True,
        rotate_artifacts=10,
    )
