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
import socket

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


def key_from_cmdline(cmdline: str) -> str | None:
    """The last `edgeiot.key=` value on a kernel command line, None if absent or malformed
    (a malformed key is no key: the agent then refuses every op that needs one)."""
    key = None
    for word in cmdline.split():
        if word.startswith(KEY_CMDLINE + "="):
            key = word.split("=", 1)[1]
    return key if is_key(key) else None


def read_cmdline_key(path: str = "/proc/cmdline") -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return key_from_cmdline(f.read())
    except OSError:
        return None


# --- sizes and ranges ---------------------------------------------------------------------------

MAX_CONTROL_LINE = 64 * 1024  # one control request, without its newline
MAX_FRAME_BYTES = 16 * 1024  # one device frame, without its newline
MAX_META_LINE = 16 * 1024  # one metadata-link line, without its newline
MAX_SEQ = 2**53  # JSON-safe integer range: sequence numbers stay below it
DEVICE_ID_MAX = 128
NAME_MAX = 128  # application and proxy names on the metadata link


# --- strict JSON: the one decoder every listener uses -------------------------------------------


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value - value != 0.0:  # inf (1e999 parses as inf) or nan
        raise ValueError(f"{text[:20]} is not a finite number")
    return value


_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)  # built once


def loads(line: bytes) -> Any:
    """Decode one line as strict JSON; ValueError (with a short message) for anything else.

    NOTE: `json.loads(bytes)` guesses UTF-16/32 from the first bytes and accepts NaN,
    Infinity and 1e999 (as inf); deep nesting raises RecursionError, which is not a
    ValueError. Decoding UTF-8 ourselves, refusing non-finite numbers and turning
    RecursionError into ValueError makes the decoder total: any byte string is a value or a
    ValueError, and no number in it is NaN or infinite.
    """
    try:
        return _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"malformed JSON: {str(exc)[:80]}") from None


def dumps(obj: object) -> bytes:
    """One line: compact JSON and a newline (the encoding of every reply and frame)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


# --- control ops (orchestrator -> guest agent, port 7070) ----------------------------------------
# A request is {"op": NAME, ...args, "auth": {"n", "mac"}}; a reply {"ok": true, ...} or
# {"ok": false, "error": MESSAGE}. `challenge` answers {"ok": true, "nonce": NONCE}.

OP_PING = "ping"
OP_STATUS = "status"
OP_DIRTY = "dirty"
OP_WORKLOAD = "workload"  # start or stop a workload family (workloads.py)
OP_DEVICE_REGISTER = "device_register"
OP_DEVICE_RELEASE = "device_release"
OP_DEVICE_ADOPT = "device_adopt"
OP_STREAM_STATS = "stream_stats"
OP_MODEL_INSTALL = "model_install"
OP_MODEL_REMOVE = "model_remove"
OP_ACTUATE = "actuate"
OP_APP_CONFIGURE = "app_configure"
OP_APP_QUERY = "app_query"
OP_APP_RECEIVED = "app_received"
AUTH_REFUSED = "unauthenticated"  # every refused op's error message starts with it


class ControlClient:
    """One control connection that signs its requests (stdlib only: tests, bench, the
    orchestrator). With `key=None` requests go unsigned (a `--insecure` agent, or open ops).

    The first request that needs a proof fetches the connection's nonce; each later one is
    signed with the next counter. A reply is returned as decoded, `ok` false included.
    """

    def __init__(self, host: str, port: int = CONTROL_PORT, key: str | None = None,
                 timeout_s: float = 3.0, max_reply: int = MAX_CONTROL_LINE * 64) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout_s)
        self._reader = self.sock.makefile("rb")
        self.key, self.nonce, self.n = key, "", 0
        self.max_reply = max_reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        """The reply to `op`; AuthError if the agent will not hand out a nonce."""
        request: dict[str, Any] = {"op": op, **args}
        if self.key is not None and op not in OPEN_OPS:
            if not self.nonce:
                self.nonce = self._challenge()
            self.n += 1
            request = sign_request(self.key, self.nonce, self.n, request)
        return self.exchange(request)

    def _challenge(self) -> str:
        reply = self.exchange({"op": OP_CHALLENGE})
        nonce = reply.get("nonce")
        if not reply.get("ok") or not isinstance(nonce, str) or not nonce:
            raise AuthError(f"challenge refused: {reply.get('error') or 'no nonce'}")
        return nonce

    def exchange(self, request: dict[str, Any]) -> dict[str, Any]:
        """Send one request as is, return the reply line decoded."""
        self.sock.sendall(dumps(request))
        line = self._reader.readline(self.max_reply + 1)
        if not line.endswith(b"\n"):
            what = "reply too long" if len(line) > self.max_reply else "connection closed"
            raise OSError(f"control connection: {what} before a reply")
        reply = loads(line)
        if not isinstance(reply, dict):
            raise ValueError(f"reply is not an object: {line[:80]!r}")
        return reply

    def close(self) -> None:
        self._reader.close()
        self.sock.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


# --- device streams (device <-> proxy, port 7071) -------------------------------------------------
# Every frame is one JSON object with its kind in "t".
#   device -> proxy: hello {dev}; auth {dev, mac}; rec {seq, ts, v}; ping {}
#   proxy -> device: challenge {dev, nonce}; welcome {dev, next, proxy}; refused {error};
#                    ack {seq[, gap]}; error {error[, seq]}; moved {dev, error}; cmd {cmd};
#                    pong {}
# After `welcome`, `next` is the seq the proxy expects: the device drops what it has below
# it and resends the rest. `refused` and `moved` are the proxy's last word on a connection.

FRAME_KIND = "t"
F_HELLO = "hello"
F_CHALLENGE = "challenge"
F_AUTH = "auth"
F_WELCOME = "welcome"
F_REFUSED = "refused"
F_REC = "rec"
F_ACK = "ack"
F_ERROR = "error"
F_MOVED = "moved"
F_CMD = "cmd"
F_PING = "ping"
F_PONG = "pong"
DEVICE_FRAMES = frozenset({F_HELLO, F_AUTH, F_REC, F_PING})  # what a device may send


def record_line(seq: int, ts: float, value: dict[str, Any]) -> bytes:
    """A record frame as the device sends it, without the newline (what the chain covers)."""
    return json.dumps({FRAME_KIND: F_REC, "seq": seq, "ts": ts, "v": value},
                      separators=(",", ":")).encode()


def chain_step(chain: str, line: bytes) -> str:
    """The hash chain over a device's accepted record lines (each without its newline): both
    ends keep it, so equal chains prove the same records in the same order."""
    return hashlib.sha256((chain + line.decode("utf-8")).encode()).hexdigest()[:32]


# --- metadata link (proxy's sink -> application VM, port 7072) -----------------------------------
#   sink -> app VM: hello {app, proxy, epoch}; auth {mac}; meta {seq, m}
#   app VM -> sink: challenge {nonce}; welcome {next}; refused {error}; ack {seq};
#                   error {error[, seq]}
# `epoch` names one sink's life (a reinstalled model or a rebooted proxy starts a new one,
# numbered from 1 again); `seq` counts that link's lines. The application VM keeps, per
# (app, proxy), the epoch and the next seq: a line below it is a duplicate (acked, dropped),
# so a sink that resends everything unacked after a reconnect delivers each line once.

M_META = "meta"
EPOCH_HEX_CHARS = 16


def meta_line(seq: int, meta: dict[str, Any]) -> bytes:
    return dumps({FRAME_KIND: M_META, "seq": seq, "m": meta})


def envelope(app: str, src: str, meta: dict[str, Any]) -> str:
    """How the application VM keeps an accepted line for the privacy audit (`app_received`)."""
    return json.dumps({"app": app, "src": src, "m": meta}, separators=(",", ":"))


# --- the directory (orchestrator -> devices) and device profiles ----------------------------------
# directory.json: {"users": {USER: ENTRY}, "devices": {DEV: ENTRY}}, ENTRY = {"proxy": ADDRESS,
# "port": PORT}; a device's own entry wins over its user's.
# A profile, as `device_register` takes it: {"id", "type", "user", "role", "group", "key"}.
# A snapshot (`device_release` -> `device_adopt`): the profile without "key", plus "next",
# "chain" and the counters; a device's key never travels in a snapshot.

DIR_USERS = "users"
DIR_DEVICES = "devices"
DIR_PROXY = "proxy"
DIR_PORT = "port"
PROFILE_FIELDS = ("id", "type", "user", "role", "group", "key")
DEVICE_ROLES = ("sensor", "actuator")
SPEC_KEYS = "keys"  # the emulator spec's {device id: key}
