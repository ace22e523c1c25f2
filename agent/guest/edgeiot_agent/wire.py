"""The wire contract: everything that crosses a process boundary between the orchestrator,
the guest agent and the device emulators is defined here, once.

Why one module: ports, op names, frame kinds and the authentication handshakes were
literals repeated on both ends; a change on one end silently broke the other. This module
is standard library only (the guest's minimal Python imports it), and a contract test holds
every end to it.

Authentication (every secret is 32 random bytes, carried as 64 hex characters):

* Orchestrator -> guest control port. Each VM has its own key, delivered out of band when
  the VM is defined (`edgeiot.key=` on the kernel command line; it migrates with the
  domain). A client opens a connection, sends `{"op": "challenge"}` and gets a fresh
  server nonce; every later request on that connection carries `"auth": {"n": N, "mac":
  M}` with N strictly increasing from 1 and M = HMAC(key, "control", nonce, N, canonical
  request without "auth"). A captured request is worthless on another connection (other
  nonce) and on the same one (N already used). Only `OPEN_OPS` need no proof.
* Device -> proxy stream port. Each device gets its own key at `device add`; `hello`
  is answered with a `challenge` nonce, the device answers `auth` with HMAC(key,
  "device", dev, nonce), and only then is the connection the device's.
* Proxy -> application VM metadata port. The application VM derives, from its own key, a
  sink key per (application, proxy); the orchestrator gives a proxy that key when it
  installs the application's model there, which is what authorises that proxy. The sink
  says `hello` with its proxy name and application, answers the nonce with HMAC(sink key,
  "sink", app, proxy, nonce), then sends numbered lines that the application VM acks.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# --- ports ------------------------------------------------------------------------------

CONTROL_PORT = 7070
STREAM_PORT = 7071
METADATA_PORT = 7072

# --- keys and proofs ----------------------------------------------------------------------

KEY_HEX_CHARS = 64
NONCE_HEX_CHARS = 32
MAC_HEX_CHARS = 64
KEY_CMDLINE = "edgeiot.key"  # the per-VM key's name on the guest kernel command line


class AuthError(ValueError):
    """A proof that does not verify; the message is safe to send back to the peer."""


def new_key() -> str:
    """A fresh secret key (64 hex characters)."""
    return secrets.token_hex(KEY_HEX_CHARS // 2)


def new_nonce() -> str:
    return secrets.token_hex(NONCE_HEX_CHARS // 2)


def is_key(value: object) -> bool:
    """True for a well-formed key: exactly 64 lowercase hex characters."""
    return (isinstance(value, str) and len(value) == KEY_HEX_CHARS
            and all(c in "0123456789abcdef" for c in value))


def canonical(obj: object) -> bytes:
    """The one byte encoding a MAC covers: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def mac(key: str, purpose: str, *parts: str | bytes) -> str:
    """HMAC-SHA256 under `key` over `purpose` and `parts`, each length-prefixed so that no
    two different part lists share an encoding."""
    h = hmac.new(bytes.fromhex(key), digestmod=hashlib.sha256)
    for part in (purpose, *parts):
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.hexdigest()


def same(expected: str, given: object) -> bool:
    """Constant-time comparison of a MAC with whatever the peer sent."""
    return isinstance(given, str) and hmac.compare_digest(expected.encode(), given.encode())


# --- control: orchestrator -> guest agent ----------------------------------------------------

OP_CHALLENGE = "challenge"
OPEN_OPS = frozenset({"ping", OP_CHALLENGE})  # answered without a proof


def control_mac(key: str, nonce: str, n: int, request: dict[str, Any]) -> str:
    body = {k: v for k, v in request.items() if k != "auth"}
    return mac(key, "control", nonce, str(n), canonical(body))


def sign_request(key: str, nonce: str, n: int, request: dict[str, Any]) -> dict[str, Any]:
    """`request` with its proof for the n-th request on the connection that got `nonce`."""
    return {**request, "auth": {"n": n, "mac": control_mac(key, nonce, n, request)}}


def verify_request(key: str, nonce: str, last_n: int, request: dict[str, Any]) -> int:
    """The request's counter if its proof holds and the counter is fresh; else AuthError."""
    auth = request.get("auth")
    if not isinstance(auth, dict):
        raise AuthError("unauthenticated: send 'challenge', then sign each request")
    n = auth.get("n")
    if not isinstance(n, int) or isinstance(n, bool) or not last_n < n < 2**53:
        raise AuthError("stale or malformed request counter")
    if not same(control_mac(key, nonce, n, request), auth.get("mac")):
        raise AuthError("bad request signature")
    return n


# --- device streams: device -> proxy ----------------------------------------------------------


def device_proof(key: str, dev: str, nonce: str) -> str:
    return mac(key, "device", dev, nonce)


# --- metadata: proxy -> application VM ---------------------------------------------------------


def sink_key(app_vm_key: str, app: str, proxy: str) -> str:
    """The key that authorises `proxy` to send `app`'s metadata to the application VM."""
    return mac(app_vm_key, "sink-key", app, proxy)


def sink_proof(key: str, app: str, proxy: str, nonce: str) -> str:
    return mac(key, "sink", app, proxy, nonce)
