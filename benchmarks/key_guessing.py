"""How fast an attacker who holds one marked file can test guessed keys, before and after stretching.

    .venv/bin/python benchmarks/key_guessing.py [--stretched-guesses 3] [--seconds 3]

The attacker's cheapest test is the restoration record every marked file carries: a guess is
right when the record opens under it. Before stretching, a passphrase went straight into
HKDF-SHA256; now it goes through scrypt (keys.STRETCH) first. Both derivations live on (a
'wm-key-v0:' key names the old one, so that older marks can still be read), which lets this
script mark one real CT under each and time both on the same core.

Three tests of a guess are timed, one process, one core:
- `open`: what `wm verify` does, `open_record` (HKDF, then AES-GCM over the whole record);
- `first block`: the shortest test there is, HKDF and one AES block: the record's plaintext
  starts with its header's length (two zero bytes) and '{"', so decrypting the first 16 bytes
  of the GCM stream tells a right key from a wrong one;
- `stretched`: scrypt of the guess, then the first-block test (scrypt is nearly all of it).
The ratio reported is against the faster of the two old tests. Then a dictionary attack on a
guessable passphrase placed at guess 97 (as in issue 29): found before, and projected after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from watermark_cli.data.clinical import clinical_file
from watermark_cli.integrity.record import _ENCRYPTION_LABEL, _HEADER, RecordNotAuthenticError, _derive, open_record
from watermark_cli.io.image import file_record, read_image
from watermark_cli.keys import STRETCH, UNSTRETCHED_PREFIX, key_material
from watermark_cli.marking.files import EmbedSettings, embed_file
from watermark_cli.marking.image import codec_for
from watermark_cli.model.store import load_model
from watermark_cli.quality import QualityFloor

PASSPHRASE_AT = 97  # where the right passphrase sits in the attacker's dictionary


def dictionary(count: int) -> list[bytes]:
    """Guesses an attacker tries first: site names, years and the usual decorations."""
    stems = [b"hospital", b"radiology", b"pacs", b"stmary", b"imaging", b"ct-archive", b"secret", b"watermark"]
    guesses = [stem + suffix for suffix in (b"", b"1", b"123", b"2025", b"2026", b"!", b"-key", b"-2026!",
                                            b"#1", b"_pacs", b"2024", b"01", b"!!")
               for stem in stems]
    return guesses[:count]


def marked_record(folder: Path, key: bytes) -> bytes:
    """Mark a real CT under `key` and return the record its file carries."""
    loaded = load_model(None)
    target = folder / f"marked-{os.urandom(4).hex()}.dcm"
    settings = EmbedSettings(b"R-0042", QualityFloor(40.0), key=key, overwrite=True)
    embed_file(clinical_file("CT_small.dcm"), target, settings, loaded, codec_for(loaded, key))
    return file_record(read_image(target))


def first_block_test(record: bytes):
    """A function material -> bool: HKDF and one AES block against the record's start."""
    _, _, salt, nonce, _ = _HEADER.unpack_from(record)
    first = record[_HEADER.size:_HEADER.size + 16]
    counter = nonce + (2).to_bytes(4, "big")  # GCM's first data block (J0 + 1, 96-bit nonce)

    def test(material: bytes) -> bool:
        key = _derive(material, salt, _ENCRYPTION_LABEL)
        encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        stream = encryptor.update(counter) + encryptor.finalize()
        plain = bytes(a ^ b for a, b in zip(first, stream))
        return plain[:2] == b"\0\0" and plain[4:6] == b'{"'

    return test


def rate(function, guesses: list[bytes], seconds: float) -> tuple[float, int]:
    """Guesses per second of `function` over `guesses` (cycled) for about `seconds`."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        for guess in guesses:
            function(guess)
        done += len(guesses)
    return done / (time.perf_counter() - started), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stretched-guesses", type=int, default=3, help="fresh guesses through scrypt to time")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long to time each old test")
    args = parser.parse_args()
    words = dictionary(PASSPHRASE_AT + 3)
    secret = words[PASSPHRASE_AT - 1]
    wrong = [os.urandom(12).hex().encode() for _ in range(64)]
    with tempfile.TemporaryDirectory() as folder:
        old_record = marked_record(Path(folder), UNSTRETCHED_PREFIX + secret)  # the derivation before stretching
        new_record = marked_record(Path(folder), secret)

    def old_open(guess: bytes) -> None:
        try:
            open_record(old_record, UNSTRETCHED_PREFIX + guess)
        except RecordNotAuthenticError:
            pass

    old_first_block = first_block_test(old_record)
    open_rate, open_n = rate(old_open, wrong, args.seconds)
    block_rate, block_n = rate(lambda guess: old_first_block(guess), wrong, args.seconds)
    assert old_first_block(secret) and not old_first_block(b"not it")

    new_first_block = first_block_test(new_record)
    samples = []
    for _ in range(args.stretched_guesses):
        guess = os.urandom(12).hex().encode()  # fresh: nothing cached
        started = time.perf_counter()
        new_first_block(key_material(guess))
        samples.append(time.perf_counter() - started)
    stretched_seconds = statistics.median(samples)
    assert new_first_block(key_material(secret))

    found_at, started = None, time.perf_counter()
    for index, guess in enumerate(words, 1):
        if old_first_block(guess):
            found_at = index
            break
    dictionary_seconds = time.perf_counter() - started
    fastest_old = max(open_rate, block_rate)
    print(f"stretching: scrypt N=2^{STRETCH['n'].bit_length() - 1}, r={STRETCH['r']}, p={STRETCH['p']} "
          f"({128 * STRETCH['r'] * STRETCH['n'] * STRETCH['p'] / 2**30:.0f} GiB)")
    print("| test of one guess, one core | guesses/s | timed over |")
    print("|---|---:|---|")
    print(f"| before: open the record (HKDF + AES-GCM) | {open_rate:,.0f} | {open_n} guesses |")
    print(f"| before: HKDF + first AES block | {block_rate:,.0f} | {block_n} guesses |")
    print(f"| after: scrypt + HKDF + first AES block | {1 / stretched_seconds:.3f} | "
          f"{args.stretched_guesses} guesses, median {stretched_seconds:.2f} s |")
    print(f"each guess now costs {fastest_old * stretched_seconds:,.0f} x what it did "
          f"(against the faster old test; goal >= 100,000)")
    print(f"dictionary attack, passphrase at guess {found_at}: before {dictionary_seconds * 1000:.1f} ms; "
          f"after about {found_at * stretched_seconds:.0f} s of one core, and a passphrase zxcvbn rates "
          f"under 10^12 guesses is refused for marking")


if __name__ == "__main__":
    main()
