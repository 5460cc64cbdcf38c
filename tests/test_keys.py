"""Keys that resist guessing (issue 29): `wm keygen`, passphrase stretching, the strength check.

The attacker holds a marked file and our code and tests guessed keys offline against the record
it carries; benchmarks/key_guessing.py measures the rate. Here: what each key form derives, what
is refused, and that no key is ever shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat

import numpy as np
import pytest
import yaml

from conftest import fixed_key, run_wm_here
from watermark_cli.data.clinical import clinical_file
from watermark_cli.errors import BadInputError
from watermark_cli.integrity.record import RecordNotAuthenticError, open_record, seal
from watermark_cli.keys import (GENERATED_PREFIX, STRETCH, UNSTRETCHED_PREFIX, guessability_problem, key_kind,
                                key_material, read_key_file)
from watermark_cli.payload import PayloadCodec

STRONG = "quarry lantern 7 marble osprey"  # a passphrase zxcvbn rates far above 10^12 guesses


def _one_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_keygen_writes_a_private_256_bit_key_and_never_replaces_one(tmp_path):
    path = tmp_path / "site.key"
    made = run_wm_here("keygen", path, "--json")
    assert made.code == 0, made.stderr
    assert json.loads(made.stdout) == {"key_file": str(path), "bits": 256, "mode": "0600"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.endswith("\n") and text.startswith(GENERATED_PREFIX.decode())
    secret = read_key_file(path)
    assert len(key_material(secret)) == 32 and guessability_problem(secret) is None
    assert text.strip() not in made.stdout + made.stderr  # the key itself is never printed

    again = run_wm_here("keygen", path)
    assert again.code == 2 and "already exists" in _one_line(again)
    assert path.read_text() == text  # the key in it is kept
    other = tmp_path / "other.key"
    assert run_wm_here("keygen", other).code == 0
    assert key_material(read_key_file(other)) != key_material(secret)  # fresh randomness each time
    missing = run_wm_here("keygen", tmp_path / "no-folder" / "k.key")
    assert missing.code == 2 and "no such folder" in _one_line(missing)
    assert run_wm_here("keygen", tmp_path).code == 2  # a folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.key", "site.key"]  # no temporary left


def test_a_generated_key_is_its_256_bits_and_a_malformed_one_is_refused():
    bits = os.urandom(32)
    assert key_material(GENERATED_PREFIX + bits.hex().encode()) == bits
    for malformed in ("wm-key-v1:abc", "wm-key-v1:" + "g" * 64, "wm-key-v1:" + bits.hex().upper(),
                      "wm-key-v1:" + bits.hex() + " "):  # one key, one spelling: no near miss reads
        with pytest.raises(BadInputError, match="not one"):
            key_material(malformed)
        with pytest.raises(BadInputError):
            guessability_problem(malformed)


@pytest.mark.parametrize("passphrase", ["k1", "secret", "hospital-key-2026", "Tr0ub4dor&3", "pacs2026!",
                                        "radiology radiology radiology", "qwertyuiop123"])
def test_a_guessable_passphrase_is_named_so(passphrase):
    problem = guessability_problem(passphrase)
    assert problem is not None and "easy to guess" in problem


@pytest.mark.parametrize("secret", [STRONG, "s\u00e9cret du d\u00e9partement, aile nord 7f3a",
                                    hashlib.sha256(b"a key file of 32 random bytes").digest(), fixed_key("any")],
                         ids=["words", "latin-1", "binary", "generated"])
def test_a_strong_key_passes_the_check(secret):
    assert guessability_problem(secret) is None


def test_the_default_key_is_never_a_protection():
    assert "public" in guessability_problem(None)
    assert key_kind(UNSTRETCHED_PREFIX + b"wm-default-key") == "default"


def test_a_guessable_passphrase_is_refused_for_marking_and_warned_about_for_reading(tmp_path):
    ct = shutil.copy(clinical_file("CT_small.dcm"), tmp_path / "ct.dcm")
    out = tmp_path / "out.dcm"
    refused = run_wm_here("embed", ct, "R-1", "--key", "hospital-key-2026", "-o", out)
    line = _one_line(refused)
    assert refused.code == 2 and "easy to guess" in line and "wm keygen" in line and "hospital" not in line
    assert not out.exists()
    weak_file = tmp_path / "weak.key"
    weak_file.write_text("pacs2026!\n")
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"forward": "127.0.0.1:4242:ORTHANC", "key_file": str(weak_file)}))
    served = run_wm_here("serve", "--check", "--config", config, "--spool", tmp_path / "spool")
    assert served.code == 2 and "easy to guess" in _one_line(served) and not (tmp_path / "spool").exists()
    # Reading: the key opens what it made, with a warning (the unstretched form costs no scrypt here).
    read = run_wm_here("extract", ct, "--key", "wm-key-v0:secret")
    assert read.code == 1 and "warning: the passphrase is easy to guess" in read.stderr
    assert "secret" not in read.stderr.replace("wm-key-v0", "")


def test_marks_made_before_stretching_read_under_wm_key_v0_and_new_marks_cannot_use_it(tmp_path):
    from watermark_cli.marking.files import EmbedSettings, embed_file
    from watermark_cli.marking.image import codec_for
    from watermark_cli.model.store import load_model
    from watermark_cli.quality import QualityFloor

    old_form = "wm-key-v0:" + STRONG  # what wm derived from the passphrase before stretching
    assert key_material(old_form) == STRONG.encode()
    loaded = load_model(None)
    marked = tmp_path / "old.dcm"
    embed_file(clinical_file("CT_small.dcm"), marked, EmbedSettings(b"OLD-7", QualityFloor(40.0), key=old_form),
               loaded, codec_for(loaded, old_form))
    read = run_wm_here("extract", marked, "--key", old_form, "--json")
    assert read.code == 0 and json.loads(read.stdout)["message"] == "OLD-7", read.stderr
    refused = run_wm_here("embed", marked, "NEW", "--key", old_form, "-o", tmp_path / "new.dcm")
    assert refused.code == 2 and "wm-key-v0" in _one_line(refused) and not (tmp_path / "new.dcm").exists()
    with pytest.raises(BadInputError, match="empty"):
        key_material("wm-key-v0:")


# Slow: one real scrypt (n = 2^20, 1 GiB) takes 5 s alone, and went over the fast lane's limit
# beside the other lane process on a busy day.
@pytest.mark.slow
def test_a_passphrase_is_stretched_before_the_record_or_the_payload_derive_from_it():
    """One scrypt (cached for the process): the record and payload keys come from it, not from
    the passphrase, so the fast test the old derivation allowed (HKDF of a guess) finds nothing."""
    rng = np.random.default_rng(3)
    original = rng.integers(0, 4096, (1, 64, 64), dtype=np.uint16)
    marked = original.copy()
    marked[0, 10, 10] += 3
    record = seal(original, marked, STRONG)
    opened, _ = open_record(record, STRONG)
    assert opened.original_pixels_sha256 != opened.marked_pixels_sha256
    with pytest.raises(RecordNotAuthenticError):
        open_record(record, UNSTRETCHED_PREFIX + STRONG.encode())  # the old, guessable derivation
    stretched, old = PayloadCodec(256, key=STRONG), PayloadCodec(256, key=UNSTRETCHED_PREFIX + STRONG.encode())
    assert stretched.field_seed != old.field_seed
    assert not old.decode(stretched.encode(b"R-0042").astype(np.float64)).found


@pytest.mark.slow
def test_the_stretch_is_scrypt_with_the_documented_parameters():
    passphrase = "lantern osprey quarry 42 marble"
    expected = hashlib.scrypt(passphrase.encode(), salt=b"wm passphrase stretching v1", n=2**20, r=8, p=1,
                              dklen=32, maxmem=2**31 - 1)
    assert STRETCH == {"n": 2**20, "r": 8, "p": 1}
    assert key_material(passphrase) == expected


@pytest.mark.slow
def test_a_passphrase_typed_in_a_terminal_that_is_not_utf8_is_its_bytes(tmp_path):
    ct = shutil.copy(clinical_file("CT_small.dcm"), tmp_path / "ct.dcm")
    out = tmp_path / "out.dcm"
    typed = b"s\xe9cret du d\xe9partement, aile nord 7f3a"  # Latin-1 bytes, as such a terminal sends them
    key = typed.decode("utf-8", "surrogateescape")  # what Python makes of such argv bytes
    marked = run_wm_here("embed", ct, "keyed", "--key", key, "-o", out)
    assert marked.code == 0, marked.stderr
    key_file = tmp_path / "latin1.key"
    key_file.write_bytes(typed)
    found = run_wm_here("extract", out, "--key-file", key_file, "--json")
    assert found.code == 0 and json.loads(found.stdout)["message"] == "keyed"
