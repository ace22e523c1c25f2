"""Composition root: builds the services, registers their ops, runs until signalled.

Why: a service is anything with `name`, `start()`, `stop()`, `status() -> dict` (merged
into the `status` reply) and `ops() -> {op: handler}` (registered on the control server).
The counter and the dirtier are the first two; the proxy's stream service or the
application VM's metadata service join the same list without changes to the control server.

A supervisor thread checks every second that each service's threads (and the control
server's) are alive and restarts any that died, counting it in `status` (`restarts`): no
input should kill a thread, and if a bug does, the VM keeps serving.

The VM's key comes from `edgeiot.key=` on the kernel command line (wire.py). Without one,
every op but `ping` and `challenge` is refused unless the agent runs with `--insecure`.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from . import DEFAULT_PORT, __version__, dataplane, sysinfo, wire
from .control import ControlServer, Dispatcher
from .counter import Counter
from .dirtier import Dirtier
from .workloads import Workloads

# NOTE: argparse, dataclasses and typing together cost ~0.5 s of imports under TCG, a good
# part of the 10 s boot budget; the agent uses none of them at run time.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, Protocol

    from .control import Request, Response

    class Service(Protocol):
        name: str

        def start(self) -> None: ...

        def stop(self) -> None: ...

        def status(self) -> dict[str, Any]: ...

        def ops(self) -> dict[str, Callable[[Request], Response]]: ...


# Memory the dirtier must leave free in the guest, so a too-large request fails cleanly
# instead of inviting the OOM killer.
DIRTIER_RESERVE_BYTES = 16 * 1024 * 1024
DIRTIER_MAX_SHARE = 0.75  # at most this share of the guest's memory as a working set
SUPERVISE_S = 1.0
USAGE = ("usage: python3 -m edgeiot_agent [--host ADDR] [--port N] [--name NAME] "
         "[--boot-id-path P] [--cmdline-path P] [--idle-timeout S] [--data-port N] [--insecure]")


class AgentConfig:
    """Where to listen and where to read the guest's facts (paths injectable for tests)."""

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        name: str = "",
        boot_id_path: str = sysinfo.BOOT_ID_PATH,
        uptime_path: str = sysinfo.UPTIME_PATH,
        meminfo_path: str = sysinfo.MEMINFO_PATH,
        counter_interval_s: float = 0.01,
        cmdline_path: str = dataplane.CMDLINE_PATH,
        insecure: bool = False,
        idle_timeout_s: float = 60.0,
        supervise_s: float = SUPERVISE_S,
        data_port: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.boot_id_path = boot_id_path
        self.uptime_path = uptime_path
        self.meminfo_path = meminfo_path
        self.counter_interval_s = counter_interval_s
        self.cmdline_path = cmdline_path
        self.insecure = insecure
        self.idle_timeout_s = idle_timeout_s
        self.supervise_s = supervise_s
        self.data_port = data_port


class Agent:
    """The services plus the control server that exposes them."""

    def __init__(self, config: AgentConfig, services: Sequence[Service] | None = None) -> None:
        self.config = config
        self.name = config.name or socket.gethostname()
        self.boot_id = sysinfo.read_boot_id(config.boot_id_path)
        self.started = time.monotonic()
        self.counter = Counter(config.counter_interval_s)
        self.dirtier = Dirtier(max_working_set=self._dirtier_limit)
        self.workloads = Workloads(max_working_set=self._dirtier_limit)
        self.services: list[Service] = [self.counter, self.dirtier, self.workloads,
                                        *(services or [])]
        self.dispatcher = Dispatcher()
        self.dispatcher.register(wire.OP_PING, lambda _req: {"pong": True})
        self.dispatcher.register(wire.OP_STATUS, lambda _req: self.status())
        for service in self.services:
            for op, handler in service.ops().items():
                self.dispatcher.register(op, handler)
        self.key = wire.read_cmdline_key(config.cmdline_path)
        self.server = ControlServer(self.dispatcher, config.host, config.port,
                                    key=self.key, insecure=config.insecure)
        for server in (self.server, *self.services):
            if hasattr(server, "idle_timeout_s"):
                server.idle_timeout_s = config.idle_timeout_s
        self.restarts: dict[str, int] = {}
        self._stop = threading.Event()
        self._supervisor: threading.Thread | None = None

    def _dirtier_limit(self) -> int:
        mem = sysinfo.read_memory(self.config.meminfo_path)
        share = int(mem["total_kib"] * 1024 * DIRTIER_MAX_SHARE)
        return min(mem["available_kib"] * 1024 - DIRTIER_RESERVE_BYTES, share)

    # --- the supervisor -------------------------------------------------------------------

    def supervised(self) -> list[tuple[str, Any]]:
        """Everything with threads to watch: the control server and each service."""
        return [("control", self.server),
                *((s.name, s) for s in self.services if hasattr(s, "alive"))]

    def supervise_once(self) -> list[str]:
        """Restart whatever died; the names restarted (each counted in `restarts`)."""
        revived = []
        for name, unit in self.supervised():
            if not unit.alive():
                unit.revive()
                self.restarts[name] = self.restarts.get(name, 0) + 1
                revived.append(name)
        return revived

    def _supervise(self) -> None:
        while not self._stop.wait(self.config.supervise_s):
            try:
                revived = self.supervise_once()
            except Exception as exc:  # never let the watcher die of what it watches
                print(f"edgeiot-agent: supervisor: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
                continue
            if revived:
                print(f"edgeiot-agent: restarted {', '.join(revived)}", file=sys.stderr,
                      flush=True)

    def uptime(self) -> float:
        try:
            return sysinfo.read_uptime(self.config.uptime_path)
        except (OSError, ValueError, IndexError):
            return time.monotonic() - self.started

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "boot_id": self.boot_id,
            "name": self.name,
            "uptime_s": round(self.uptime(), 3),
            "agent_uptime_s": round(time.monotonic() - self.started, 3),
            "version": __version__,
            "restarts": dict(self.restarts),
            "restarts_total": sum(self.restarts.values()),
            **self.server.status(),
        }
        for service in self.services:
            out.update(service.status())
        try:
            out["memory"] = sysinfo.read_memory(self.config.meminfo_path)
        except OSError:
            pass
        return out

    def start(self) -> None:
        for service in self.services:
            service.start()
        self.server.start()
        self._supervisor = threading.Thread(target=self._supervise, name="supervisor",
                                            daemon=True)
        self._supervisor.start()

    def stop(self) -> None:
        self._stop.set()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2)
        self.server.stop()
        for service in reversed(self.services):
            service.stop()


def parse_args(argv: Sequence[str] | None) -> AgentConfig:
    """`--opt VALUE` pairs only; exits with status 2 and the usage line on anything else."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] in (["-h"], ["--help"]):
        print(USAGE)
        raise SystemExit(0)
    options = {"--host": "host", "--port": "port", "--name": "name",
               "--boot-id-path": "boot_id_path", "--cmdline-path": "cmdline_path",
               "--idle-timeout": "idle_timeout_s", "--data-port": "data_port"}
    values: dict[str, Any] = {}
    while args:
        flag = args.pop(0)
        if flag == "--insecure":
            values["insecure"] = True
            continue
        if flag not in options or not args:
            print(f"edgeiot_agent: bad argument {flag!r}\n{USAGE}", file=sys.stderr)
            raise SystemExit(2)
        values[options[flag]] = args.pop(0)
    try:
        values["port"] = int(values.get("port", DEFAULT_PORT))
        if "data_port" in values:
            values["data_port"] = int(values["data_port"])
        idle = float(values.get("idle_timeout_s", 60.0))
    except ValueError:
        print(f"edgeiot_agent: --port and --idle-timeout must be numbers\n{USAGE}",
              file=sys.stderr)
        raise SystemExit(2) from None
    if not 0 < idle < float("inf"):
        print(f"edgeiot_agent: --idle-timeout must be > 0\n{USAGE}", file=sys.stderr)
        raise SystemExit(2)
    values["idle_timeout_s"] = idle
    return AgentConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    # The proxy's stream service or the application VM's metadata service.
    role = dataplane.read_role(config.cmdline_path)
    key = wire.read_cmdline_key(config.cmdline_path)
    services = dataplane.services_for(role, config.name or socket.gethostname(), key,
                                      config.host, config.data_port)
    agent = Agent(config, services)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    _, port = agent.server.address
    data_port = services[0].address[1]
    secured = "key" if agent.key else ("INSECURE" if config.insecure else "no-key(refusing)")
    print(f"edgeiot-agent: ready role={role} port={port} data_port={data_port} "
          f"boot_id={agent.boot_id} name={agent.name} uptime={agent.uptime():.2f} "
          f"pid={os.getpid()} auth={secured}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        agent.stop()
        print("edgeiot-agent: stopped", file=sys.stderr, flush=True)
    return 0
