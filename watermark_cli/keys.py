"""Keys: where the secret comes from, the rules every use of it follows, and how it is named.

One key serves the payload (its tag, encryption and pad) and the restoration record (its
AES-GCM key): each derives its own keys from the same bytes (`payload`, `integrity.record`).

- Sources, in order: `--key` text, `--key-file` bytes, the `WM_KEY` variable (`resolve_key`).
  `--key` is visible to other users in `ps`; the other two are not.
- No key means the public `DEFAULT_KEY`: it detects, it does not protect (it is written here,
  so anyone can read and forge marks made with it).
- An empty key is refused: it is nearly always an unset variable (`--key "$WM_KEY"`).
- A key is never printed: output, audit lines and reports say `key_kind` ('default' or
  'custom'); errors name where a key came from, never its bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError

DEFAULT_KEY = "wm-default-key"
"""Public key used when none is given: no secrecy, no authenticity."""

_MAX_KEY_FILE_BYTES = 2**20


def key_bytes(key: str | bytes | None) -> bytes:
    """The bytes every derivation starts from: the public default for None; text as UTF-8."""
    if key is None:
        return DEFAULT_KEY.encode("utf-8")
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, (bytes, bytearray)):
        raise BadInputError(f"key must be text or bytes, not {type(key).__name__}")
    if len(key) == 0:
        raise BadInputError("the key is empty; give a non-empty key, or none for the public default key")
    return bytes(key)


def key_kind(key: str | bytes | None) -> str:
    """'default' for the public default key, else 'custom' (what JSON and audit lines show)."""
    return "default" if key is None or key_bytes(key) == DEFAULT_KEY.encode("utf-8") else "custom"


def resolve_key(key: str | None, key_file: Path | None) -> bytes | None:
    """The key from --key, --key-file or the WM_KEY variable (in that order; at most one of the
    first two), None for the public default key. Errors never show the key."""
    if key is not None and key_file is not None:
        raise BadInputError("give the key once: --key or --key-file, not both")
    if key_file is not None:
        return read_key_file(key_file)
    # A key is bytes: one typed in a terminal that is not UTF-8 is taken as the bytes it typed
    # (Python hands undecodable argument bytes over as surrogates; surrogateescape gives them back).
    if key is not None:
        return _key_text_bytes(key, "--key")
    if "WM_KEY" in os.environ:
        if not os.environ["WM_KEY"]:
            raise BadInputError("WM_KEY is set but empty; unset it for the public default key")
        return _key_text_bytes(os.environ["WM_KEY"], "WM_KEY")
    return None


def _key_text_bytes(text: str, where: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate no terminal byte makes (only an API caller can)
        raise BadInputError(f"{where} is not text that can be encoded (use --key-file for binary keys)") from None


def read_key_file(path) -> bytes:
    """A key file's bytes, without one trailing newline (LF or CRLF); errors never show the key."""
    path = Path(path)
    try:
        if path.is_file() and path.stat().st_size > _MAX_KEY_FILE_BYTES:
            raise BadInputError(f"--key-file {path}: too large for a key file (at most 1 MiB)")
        secret = path.read_bytes()
    except OSError as error:
        raise BadInputError(f"--key-file {path}: cannot read it ({error.strerror or 'unreadable'})") from None
    secret = secret[:-1] if secret.endswith(b"\n") else secret
    secret = secret[:-1] if secret.endswith(b"\r") else secret
    if not secret:
        raise BadInputError(f"--key-file {path} is empty")
    return secret


@dataclass(frozen=True)
class KeyFileReference:
    """A key that remote workers read from the storage they share with the caller, so that the key
    itself never crosses the network; `check` lets each of them confirm it read the same key.
    The check is scrypt of the key under a random salt: costly to guess a weak key from."""

    path: str  # absolute
    salt: bytes
    check: bytes

    @classmethod
    def of(cls, path, secret: bytes) -> "KeyFileReference":
        salt = os.urandom(16)
        return cls(str(Path(path).resolve()), salt, _key_check(secret, salt))

    def read(self) -> bytes:
        secret = read_key_file(self.path)
        if not hmac.compare_digest(_key_check(secret, self.salt), self.check):
            raise BadInputError(f"--key-file {self.path} holds another key on this worker than on the caller")
        return secret


def _key_check(secret: bytes, salt: bytes) -> bytes:
    return hashlib.scrypt(secret, salt=salt, n=2**14, r=8, p=1, dklen=32)
