"""Signed commands: HMAC-SHA256 with the fleet key, over the routing key, a timestamp, a nonce
and the body, so that a broker credential alone cannot drive the fleet.

The signature travels in the body (`"signature": {"timestamp", "nonce", "hmac"}`), not in
message headers, so it means the same on every transport. What is signed is

    routing_key "\\n" timestamp "\\n" nonce "\\n" canonical JSON of the body without "signature"

(canonical: keys sorted, no spaces, UTF-8), so the verb and the target agent are covered and
the body may be re-serialised on the way. A command is refused when its timestamp is further
than `max_age` from the agent's clock, and when its nonce was already used within that window.
Pure: the clock is a seam.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

FIELD = "signature"
MIN_KEY = 16  # characters of key file: shorter keys are refused as guessable
NONCES_MAX = 100_000  # past this many nonces within one window, the oldest are forgotten


class SignatureError(ValueError):
    """The command is not signed as it must be; the message says how."""


class KeyFileError(ValueError):
    """The key file cannot be used; the message says why."""


def load_key(path_text: str, base_dir: Path) -> bytes:
    """The key: the key file's text, stripped (relative paths: to the conf.d folder's parent)."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise KeyFileError(f"{path}: cannot read it: {reason}") from None
    if len(text) < MIN_KEY:
        raise KeyFileError(f"{path}: the key must be at least {MIN_KEY} characters (e.g. `openssl rand -hex 32`)")
    return text.encode("utf-8")


def canonical(body: Mapping[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in body.items() if k != FIELD}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode("utf-8")


def _mac(key: bytes, routing_key: str, timestamp: int, nonce: str, body: Mapping[str, Any]) -> str:
    message = f"{routing_key}\n{timestamp}\n{nonce}\n".encode() + canonical(body)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def sign(key: bytes, routing_key: str, body: Mapping[str, Any], now: float | None = None,
         nonce: str | None = None) -> dict[str, Any]:
    """The body with its signature added."""
    timestamp = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_hex(16)
    return {**{k: v for k, v in body.items() if k != FIELD},
            FIELD: {"timestamp": timestamp, "nonce": nonce, "hmac": _mac(key, routing_key, timestamp, nonce, body)}}


class Verifier:
    """Checks signatures and remembers the nonces seen within the replay window."""

    def __init__(self, key: bytes, max_age: float, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self.max_age = max_age
        self.clock = clock
        self._seen: dict[str, float] = {}  # nonce -> when it may be forgotten (insertion order ~ time)

    def check(self, routing_key: str, body: Mapping[str, Any]) -> None:
        """Raises SignatureError unless the body is signed with the key, fresh and not replayed."""
        sig = body.get(FIELD)
        if sig is None:
            raise SignatureError("unsigned command: this agent carries out only commands signed with the fleet "
                               "key (queue.command_key_file)")
        if not isinstance(sig, dict) or set(sig) != {"timestamp", "nonce", "hmac"}:
            raise SignatureError('"signature" must be {"timestamp": seconds, "nonce": "...", "hmac": "..."}')
        timestamp, nonce, mac = sig["timestamp"], sig["nonce"], sig["hmac"]
        if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not isinstance(nonce, str) \
                or not isinstance(mac, str) or not 8 <= len(nonce) <= 128:
            raise SignatureError('"signature": timestamp must be whole seconds, nonce a string of 8 to 128 '
                               'characters, hmac a hex string')
        if not hmac.compare_digest(mac.encode(), _mac(self.key, routing_key, timestamp, nonce, body).encode()):
            raise SignatureError("bad signature: not signed with this fleet's key, or altered on the way")
        now = self.clock()
        if abs(now - timestamp) > self.max_age:
            raise SignatureError(f"signed command is {now - timestamp:.0f}s old; at most {self.max_age:g}s "
                               "(replayed, or a clock is off)")
        self._forget_old(now)
        if nonce in self._seen:
            raise SignatureError("replayed command: this signature's nonce was already used")
        self._seen[nonce] = now + 2 * self.max_age

    def _forget_old(self, now: float) -> None:
        while self._seen:
            nonce, until = next(iter(self._seen.items()))
            if until > now and len(self._seen) < NONCES_MAX:
                break
            del self._seen[nonce]
