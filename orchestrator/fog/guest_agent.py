"""Client of the in-guest agent's control port: newline-delimited JSON over TCP.

Every connection is checked by netguard first: a guest address is a lab address.

Authentication (agent.guest.edgeiot_agent.wire): with the VM's key, each request opens a
connection, asks for a `challenge` nonce and sends the request signed as the first (n = 1)
on that connection, so a request captured on the lab segment is worthless on any other
connection and on this one. Only the open ops (`ping`, `challenge`) go unsigned. Without a
key (`key=None`) requests go unsigned: that only serves guests that predate
authentication, and a guest that requires it refuses them with a one-line error.
"""

from __future__ import annotations

import time
from typing import Any

from agent.guest.edgeiot_agent import wire
from orchestrator.errors import OrchestratorError, UnsafeDestination
from orchestrator.netguard import NetworkPolicy, check_destination

MAX_REPLY_BYTES = 64 * 2**20  # a longer line is a broken (or hostile) guest, not an answer


class GuestRefused(OrchestratorError):
    """The agent answered, and said no: waiting longer will not change the answer."""


class GuestAgent:
    def __init__(self, address: str, policy: NetworkPolicy, port: int = wire.CONTROL_PORT,
                 timeout_s: float = 3.0, key: str | None = None) -> None:
        if key is not None and not wire.is_key(key):
            raise OrchestratorError(f"guest agent {address}: malformed VM key in the records")
        self.address = address
        self.policy = policy
        self.port = port
        self.timeout_s = timeout_s
        self._key = key  # never part of a message, a repr or a log line

    def __repr__(self) -> str:
        return f"GuestAgent({self.address}:{self.port}, signed={self._key is not None})"

    def request(self, op: str, **args: Any) -> dict[str, Any]:
        """One request on a fresh connection; signed unless `op` is open or there is no key."""
        target = check_destination(self.address, self.policy)
        try:
            with wire.ControlClient(target, self.port, self._key, self.timeout_s,
                                    max_reply=MAX_REPLY_BYTES) as client:
                answer = client.call(op, **args)
        except wire.AuthError as exc:
            raise GuestRefused(f"guest agent {self.address}: {exc}") from None
        except OSError as exc:
            raise OrchestratorError(f"guest agent {self.address}:{self.port}: {exc}") from exc
        except ValueError as exc:  # strict decoder: not UTF-8 JSON, NaN, too deep, no object
            raise OrchestratorError(f"guest agent {self.address}: bad reply: {exc}") from exc
        if not answer.get("ok"):
            raise GuestRefused(f"guest agent {self.address}: {answer.get('error')}")
        return answer

    def status(self) -> dict[str, Any]:
        return self.request(wire.OP_STATUS)

    def set_dirtier(self, pages_per_s: int, working_set_mib: int) -> dict[str, Any]:
        return self.request(wire.OP_DIRTY, pages_per_s=pages_per_s, working_set_mib=working_set_mib)

    def wait_ready(self, timeout_s: float = 30.0) -> dict[str, Any]:
        """The agent's status once it answers; a refusal (a wrong key, say) ends the wait at
        once, since the agent is up and will refuse again."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.status()
            except (UnsafeDestination, GuestRefused):
                raise
            except OrchestratorError as exc:
                if time.monotonic() > deadline:
                    raise OrchestratorError(
                        f"guest agent at {self.address} not ready after {timeout_s:g} s: {exc}"
                    ) from exc
                time.sleep(0.2)
