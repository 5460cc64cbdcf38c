"""Keys: where the secret comes from, the rules every use of it follows, and how it is named.

One key serves the payload (its tag, encryption, pad and key field) and the restoration record
(its AES-GCM and block-tag keys): each derives its own keys from the same `key_material`.

- Sources, in order: `--key` text, `--key-file` bytes, the `WM_KEY` variable (`resolve_key`).
  `--key` is visible to other users in `ps`; the other two are not.
- A generated key (`wm keygen FILE`: 'wm-key-v1:' and 64 hex digits, 256 random bits) is used
  as it is: no one guesses 2^256.
- Anything else is a passphrase: it is stretched by scrypt (`STRETCH`, 1 GiB, seconds per
  guess) before any key derives from it, because a marked file's record lets anyone test
  guesses offline. Stretching makes each guess over 10^5 times dearer than the HKDF alone
  (benchmarks/key_guessing.py); the salt is fixed (a mark must be read with nothing but the key),
  so a dictionary, once stretched, serves against every passphrase: a passphrase that zxcvbn
  rates under 10^12 guesses is refused for marking and warned about for reading.
- 'wm-key-v0:' before a passphrase names the derivation of marks made before stretching (the
  passphrase used as is): for reading, verifying and restoring them only; marking refuses it.
- No key means the public `DEFAULT_KEY`: it detects, it does not protect (it is written here,
  so anyone can read and forge marks made with it; stretching it would protect nothing).
- An empty key is refused: it is nearly always an unset variable (`--key "$WM_KEY"`).
- A key is never printed: output, audit lines and reports say `key_kind` ('default' or
  'custom'); errors name where a key came from, never its bytes.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .errors import BadInputError

DEFAULT_KEY = "wm-default-key"
"""Public key used when none is given: no secrecy, no authenticity."""

GENERATED_PREFIX = b"wm-key-v1:"
"""What a key made by `wm keygen` starts with; 64 hex digits (256 random bits) follow."""
UNSTRETCHED_PREFIX = b"wm-key-v0:"
"""Before a passphrase: use it as is, as wm did before stretching (reading older marks only)."""

# scrypt (RFC 7914) at N = 2^20, r = 8: 1 GiB of memory and a few seconds of one core per
# guess, so that a GPU or an ASIC gains little over a CPU. Chosen so that a guess tested through
# a marked file costs at least 10^5 times what the HKDF alone cost (benchmarks/key_guessing.py).
STRETCH = {"n": 2**20, "r": 8, "p": 1}
_STRETCH_SALT = b"wm passphrase stretching v1"
_STRETCH_MEMORY = 128 * STRETCH["r"] * STRETCH["n"] * STRETCH["p"] + 2**20

MIN_GUESSES_LOG10 = 12
"""A passphrase zxcvbn rates under 10^12 guesses is refused for marking (about 40 bits; at the
stretched rate, 10^12 guesses cost about 10^5 core-years)."""
_RATED_CHARACTERS = 72  # zxcvbn rates at most this many; a longer passphrase is rated on its start

_MAX_KEY_FILE_BYTES = 2**20
_GENERATED = re.compile(rb"wm-key-v1:([0-9a-f]{64})")


class KeyUse(str, Enum):
    """What a key is wanted for: marking refuses what reading only warns about."""

    mark = "mark"
    read = "read"


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
    """'default' for the public default key (also when named as an unstretched passphrase), else
    'custom' (what JSON and audit lines show)."""
    if key is None:
        return "default"
    secret = key_bytes(key)
    return "default" if secret in (DEFAULT_KEY.encode("utf-8"), UNSTRETCHED_PREFIX + DEFAULT_KEY.encode("utf-8")) else "custom"


def key_material(key: str | bytes | None) -> bytes:
    """The secret every key of the payload and the record derives from: a generated key's 256
    bits; a passphrase stretched by scrypt (once per process and passphrase); the public default
    key, and a 'wm-key-v0:' passphrase, as they are."""
    secret = key_bytes(key)
    if secret == DEFAULT_KEY.encode("utf-8"):
        return secret
    if secret.startswith(GENERATED_PREFIX):
        return _generated_bits(secret)
    if secret.startswith(UNSTRETCHED_PREFIX):
        if len(secret) == len(UNSTRETCHED_PREFIX):
            raise BadInputError("the key is empty after 'wm-key-v0:'; give the passphrase the older marks were made with")
        return secret[len(UNSTRETCHED_PREFIX):]
    return _stretched(secret)


@functools.lru_cache(maxsize=8)
def _stretched(passphrase: bytes) -> bytes:
    return hashlib.scrypt(passphrase, salt=_STRETCH_SALT, dklen=32, maxmem=_STRETCH_MEMORY, **STRETCH)


def _generated_bits(secret: bytes) -> bytes:
    match = _GENERATED.fullmatch(secret)
    if match is None:
        raise BadInputError("the key starts like a generated key (wm-key-v1:) but is not one: 64 lower-case hex "
                            "digits must follow; make a new one with `wm keygen FILE`")
    return bytes.fromhex(match.group(1).decode("ascii"))


def generated_key_text() -> str:
    """A new key as `wm keygen` writes it: 256 bits from the operating system's CSPRNG."""
    return (GENERATED_PREFIX + os.urandom(32).hex().encode("ascii")).decode("ascii")


def guessability_problem(key: str | bytes | None) -> str | None:
    """Why `key` is easy to guess, or None: a generated key never is; the public default key
    always is (it is public); a passphrase is rated by zxcvbn (dictionaries, names, l33t,
    keyboard walks, repeats, dates) on its first 72 characters."""
    if key is None:
        return "the public default key is written in wm's source"
    secret = key_bytes(key)
    if secret.startswith(GENERATED_PREFIX):
        _generated_bits(secret)
        return None
    if key_kind(secret) == "default":
        return "the public default key is written in wm's source"
    if secret.startswith(UNSTRETCHED_PREFIX):
        secret = secret[len(UNSTRETCHED_PREFIX):]
    from zxcvbn import zxcvbn

    try:
        text = secret.decode("utf-8")
    except UnicodeDecodeError:  # binary (a key file of random bytes): rated as Latin-1 characters
        text = secret.decode("latin-1")
    text = text[:_RATED_CHARACTERS]
    guesses_log10 = float(zxcvbn(text, max_length=_RATED_CHARACTERS)["guesses_log10"])
    if guesses_log10 >= MIN_GUESSES_LOG10:
        return None
    return f"the passphrase is easy to guess (about 10^{guesses_log10:.0f} guesses; at least 10^{MIN_GUESSES_LOG10} wanted)"


def resolve_key(key: str | None, key_file: Path | None, use: KeyUse = KeyUse.read) -> bytes | None:
    """The key from --key, --key-file or the WM_KEY variable (in that order; at most one of the
    first two), None for the public default key. For marking, a passphrase that is easy to guess
    and an unstretched ('wm-key-v0:') one are refused (`key_warning` says the same for reading).
    Errors never show the key."""
    secret = _given_key(key, key_file)
    if secret is None or use is KeyUse.read:
        return secret
    if secret.startswith(UNSTRETCHED_PREFIX):
        raise BadInputError("a 'wm-key-v0:' key reads marks made before passphrases were stretched; new marks need "
                            "a generated key (`wm keygen FILE`, then --key-file FILE) or a strong passphrase")
    problem = guessability_problem(secret)
    if problem is not None:
        raise BadInputError(f"{problem}: make a key with `wm keygen FILE` and give --key-file FILE, or use a "
                            f"passphrase of several random words")
    key_material(secret)  # stretched now, once, rather than in the middle of the first file
    return secret


def key_warning(secret: bytes | None) -> str | None:
    """For reading with a custom key: a warning when the passphrase is easy to guess (whoever has
    a file marked with it can find it offline), else None."""
    if secret is None or key_kind(secret) == "default":
        return None
    problem = guessability_problem(secret)
    return None if problem is None else f"warning: {problem}; marks made with it can be read and forged by " \
                                        f"whoever guesses it (make a new key with `wm keygen FILE`)"


def _given_key(key: str | None, key_file: Path | None) -> bytes | None:
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
    The check is an HMAC under the key's material (a passphrase stretched first) with a random
    salt: a guess tested against it costs what one through a marked file does."""

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
    return hmac.new(key_material(secret), b"wm key file check v1" + salt, hashlib.sha256).digest()
