"""`python -m agent.host --listen ADDR:PORT --libvirt-uri URI`: serve the host's metrics.

Runs in the foreground (the fog_node playbook daemonises it with start-stop-daemon in the
lab, or runs it as a systemd service on real hosts) until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import threading
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from agent.host.collectors import LibvirtCollector, SystemCollector
from agent.host.exporter import serve_registry


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected ADDR:PORT, got {text!r}")
    return host, int(port)


def libvirt_connector(uri: str) -> Any:
    def connect() -> Any:
        import libvirt  # only here: the collectors take any connection

        libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
        return libvirt.openReadOnly(uri)

    return connect


def build_registry(node: str, libvirt_uri: str | None,
                   filesystems: list[str]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SystemCollector(node, psutil, filesystems))
    if libvirt_uri:
        registry.register(LibvirtCollector(node, libvirt_connector(libvirt_uri)))
    return registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agent.host", description=__doc__)
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 9100),
                        help="ADDR:PORT to serve /metrics on (default 127.0.0.1:9100)")
    parser.add_argument("--libvirt-uri", default=None,
                        help="libvirt URI of this host's hypervisor (e.g. qemu:///system)")
    parser.add_argument("--node", default=socket.gethostname(),
                        help="value of the `node` label (default: the host name)")
    parser.add_argument("--filesystem", action="append", default=None,
                        help="path whose filesystem to report (repeatable; default /)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s")
    registry = build_registry(args.node, args.libvirt_uri, args.filesystem or ["/"])
    host, port = args.listen
    server = serve_registry(registry, host, port)  # bounded: see agent.host.bounded
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    server.server_close()


if __name__ == "__main__":
    main()
