"""Composition root: builds the services, registers their ops, runs until signalled.

Why: a service is anything with `name`, `start()`, `stop()`, `status() -> dict` (merged
into the `status` reply) and `ops() -> {op: handler}` (registered on the control server).
The counter and the dirtier are the first two; issue 3's stream receiver, classifier and
semantic-model runner join the same list without changes to the control server.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time

from . import DEFAULT_PORT, __version__, dataplane, sysinfo
from .control import ControlServer, Dispatcher
from .counter import Counter
from .dirtier import Dirtier

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
USAGE = "usage: python3 -m edgeiot_agent [--host ADDR] [--port N] [--name NAME] [--boot-id-path P]"


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
    ) -> None:
        self.host = host
        self.port = port
        self.name = name
        self.boot_id_path = boot_id_path
        self.uptime_path = uptime_path
        self.meminfo_path = meminfo_path
        self.counter_interval_s = counter_interval_s


class Agent:
    """The services plus the control server that exposes them."""

    def __init__(self, config: AgentConfig, services: Sequence[Service] | None = None) -> None:
        self.config = config
        self.name = config.name or socket.gethostname()
        self.boot_id = sysinfo.read_boot_id(config.boot_id_path)
        self.started = time.monotonic()
        self.counter = Counter(config.counter_interval_s)
        self.dirtier = Dirtier(max_working_set=self._dirtier_limit)
        self.services: list[Service] = [self.counter, self.dirtier, *(services or [])]
        self.dispatcher = Dispatcher()
        self.dispatcher.register("ping", lambda _req: {"pong": True})
        self.dispatcher.register("status", lambda _req: self.status())
        for service in self.services:
            for op, handler in service.ops().items():
                self.dispatcher.register(op, handler)
        self.server = ControlServer(self.dispatcher, config.host, config.port)

    def _dirtier_limit(self) -> int:
        mem = sysinfo.read_memory(self.config.meminfo_path)
        return mem["available_kib"] * 1024 - DIRTIER_RESERVE_BYTES

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

    def stop(self) -> None:
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
               "--boot-id-path": "boot_id_path"}
    values: dict[str, Any] = {}
    while args:
        flag = args.pop(0)
        if flag not in options or not args:
            print(f"edgeiot_agent: bad argument {flag!r}\n{USAGE}", file=sys.stderr)
            raise SystemExit(2)
        values[options[flag]] = args.pop(0)
    try:
        values["port"] = int(values.get("port", DEFAULT_PORT))
    except ValueError:
        print(f"edgeiot_agent: --port must be an integer\n{USAGE}", file=sys.stderr)
        raise SystemExit(2) from None
    return AgentConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    # Issue 3: the proxy's stream service or the application VM's metadata service.
    role = dataplane.read_role()
    agent = Agent(config, dataplane.services_for(role, config.name or socket.gethostname()))
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    _, port = agent.server.address
    print(f"edgeiot-agent: ready role={role} port={port} boot_id={agent.boot_id} name={agent.name} "
          f"uptime={agent.uptime():.2f} pid={os.getpid()}", flush=True)
    try:
        while not done.wait(1.0):
            pass
    finally:
        agent.stop()
        print("edgeiot-agent: stopped", file=sys.stderr, flush=True)
    return 0
