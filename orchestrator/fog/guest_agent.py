"""Client of the in-guest agent's control port: newline-delimited JSON over TCP.

Every connection is checked by netguard first: a guest address is a lab address.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from orchestrator.errors import OrchestratorError, UnsafeDestination
from orchestrator.images import AGENT_PORT
from orchestrator.netguard import NetworkPolicy, check_destination


class GuestAgent:
    def __init__(self, address: str, policy: NetworkPolicy, port: int = AGENT_PORT,
                 timeout_s: float = 3.0) -> None:
        self.address = address
        self.policy = policy
        self.port = port
        self.timeout_s = timeout_s

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        target = check_destination(self.address, self.policy)
        try:
            with socket.create_connection((target, self.port), timeout=self.timeout_s) as sock:
                sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
                reply = sock.makefile("rb").readline()
        except OSError as exc:
            raise OrchestratorError(f"guest agent {self.address}:{self.port}: {exc}") from exc
        try:
            answer: dict[str, Any] = json.loads(reply)
        except ValueError as exc:
            raise OrchestratorError(f"guest agent {self.address}: bad reply {reply!r}") from exc
        if not answer.get("ok"):
            raise OrchestratorError(f"guest agent {self.address}: {answer.get('error')}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def set_dirtier(self, pages_per_s: int, working_set_mib: int) -> dict[str, Any]:
        return self.request("dirty", pages_per_s=pages_per_s, working_set_mib=working_set_mib)

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.status()
            except UnsafeDestination:
                raise
            except OrchestratorError as exc:
                if time.monotonic() > deadline:
                    raise OrchestratorError(
                        f"guest agent at {self.address} not ready after {timeout_s:g} s: {exc}"
                    ) from exc
                time.sleep(0.2)
