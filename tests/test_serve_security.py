"""`wm serve` under attack (issue 29): every attack of the issue repeated over real DICOM
associations, with the answer the node must give.

- a spoofed caller (pynetdicom) sends a fake instance under a real SOP Instance UID; the genuine
  sender (dcmtk's storescu, the second DICOM implementation) then sends the real one, which must
  be kept as a conflict, reported and audited, and never answered success;
- a caller beyond loopback with only an AE title (no listed address, no certificate) is refused;
- under mutual TLS a certificate is good only for the AE title it is bound to;
- the archive's certificate is checked (CA or pinned fingerprint); a mismatch keeps the
  instance in the spool until the real archive takes it;
- every number in the configuration is validated, one line naming the key.

The node runs in this process (MarkingNode.start/stop) so that its log can be read directly;
the archive is a pynetdicom storage SCP, with TLS where the test needs it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import socket
import ssl
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml

from conftest import fixed_key
from dicom_peers import free_port, tool, wait_for
from watermark_cli.data.clinical import clinical_file
from watermark_cli.errors import BadInputError

# Their slow tests want the machine to themselves (`scripts/test.sh --all`).
pytestmark = pytest.mark.exclusive

KEY = fixed_key("serve-security-test-key")
NODE_AE = "WMNODE"


# ---- certificates ----------------------------------------------------------------------------

class Authority:
    """A test CA that issues TLS certificates (PEM files in `folder`)."""

    def __init__(self, folder: Path, name: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.certificate = (
            x509.CertificateBuilder().subject_name(self.subject).issuer_name(self.subject)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.pem = folder / f"{name}-ca.pem"
        self.pem.write_bytes(self._pem(self.certificate))

    @staticmethod
    def _pem(certificate) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, name: str, addresses=("127.0.0.1",)) -> tuple[Path, Path, str]:
        """Key file, certificate file and the certificate's SHA-256 (hex) for `name`."""
        import ipaddress

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        names = [x509.DNSName("localhost"), *[x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]]
        certificate = (
            x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        key_path, cert_path = self.folder / f"{name}.key", self.folder / f"{name}.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        cert_path.write_bytes(self._pem(certificate))
        return key_path, cert_path, hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()


def client_tls(authority: Authority, identity: tuple[Path, Path, str] | None):
    """pynetdicom tls_args for a sender: the node's certificate checked against `authority`,
    `identity` (key, certificate) presented when given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(authority.pem))
    context.check_hostname = False
    if identity is not None:
        context.load_cert_chain(identity[1], identity[0])
    return context, None


# ---- peers -----------------------------------------------------------------------------------

def outside_address() -> str | None:
    """This machine's own address on a non-loopback interface: a connection to it comes from it,
    so the node sees a caller beyond loopback. None where there is no such interface."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
            address = probe.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


class Archive:
    """A pynetdicom storage SCP standing in for the PACS; what it stored, in order."""

    def __init__(self, tls_identity: tuple[Path, Path, str] | None = None, classes: list[str] | None = None) -> None:
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt

        self.stored: list[pydicom.Dataset] = []
        self.port = free_port()
        ae = AE(ae_title="ARCHIVE")
        for context in AllStoragePresentationContexts:
            if classes is None or context.abstract_syntax in classes:
                ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        context = None
        if tls_identity is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls_identity[1], tls_identity[0])
            context.verify_mode = ssl.CERT_NONE  # the archive does not ask for the node's certificate
        self.server = ae.start_server(("127.0.0.1", self.port), block=False, ssl_context=context,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:
        self.stored.append(event.dataset)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


class Node:
    """MarkingNode in this process, configured through a real YAML file; its log in `events`."""

    def __init__(self, folder: Path, monkeypatch, forward_port: int, **settings) -> None:
        from watermark_cli.serve import node as node_module

        self.folder, self.port, self.events = folder, free_port(), []
        folder.mkdir(exist_ok=True)
        (folder / "key.txt").write_text(KEY)
        self.config_path = folder / "serve.yaml"
        self.config_path.write_text(yaml.safe_dump({
            "port": self.port, "ae_title": NODE_AE, "spool": str(folder / "spool"), "key_file": str(folder / "key.txt"),
            "forward": {"host": "127.0.0.1", "port": forward_port, "ae_title": "ARCHIVE"}, "workers": 1,
            "retry_max_seconds": 1, **settings}))
        monkeypatch.setattr(node_module, "log_event", lambda event, **facts: self.events.append({"event": event,
                                                                                               **facts}))
        from watermark_cli.serve.config import load_config

        self.node = node_module.MarkingNode(load_config(self.config_path).check(), KEY.encode())

    def __enter__(self) -> "Node":
        self.node.start()
        return self

    def __exit__(self, *_) -> None:
        self.node.stop(drain_seconds=0)

    def of(self, kind: str) -> list[dict]:
        return [entry for entry in self.events if entry["event"] == kind]

    @property
    def spool(self) -> Path:
        return self.folder / "spool"

    def security_audit(self) -> list[dict]:
        path = self.spool / "security.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def send(ds: pydicom.Dataset, port: int, calling: str, host: str = "127.0.0.1", tls=None) -> int | str:
    """C-STORE `ds` with pynetdicom: the response status, or how the association ended."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate(host, port, ae_title=NODE_AE, tls_args=tls)
    if assoc.is_rejected:
        return "rejected"
    if not assoc.is_established:
        return "no association"
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if "Status" in status else "no response"
    finally:
        assoc.release()


def storescu(path: Path, port: int, calling: str) -> subprocess.CompletedProcess:
    return subprocess.run([tool("storescu"), "-aet", calling, "-aec", NODE_AE, "127.0.0.1", str(port), str(path)],
                          capture_output=True, text=True, timeout=120)


def genuine_instance() -> Path:
    return clinical_file("693_UNCR.dcm")


def forged_instance(folder: Path) -> Path:
    """The genuine instance's SOP Instance UID on other pixels and another patient."""
    ds = pydicom.dcmread(genuine_instance())
    pixels = ds.pixel_array.copy()
    pixels[20:60, 20:60] = pixels.max()
    ds.PixelData = pixels.astype(pixels.dtype).tobytes()
    ds.PatientName = "Forged^Patient"
    path = folder / "forged.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def original_uid(ds: pydicom.Dataset) -> str:
    return str(ds.SourceImageSequence[-1].ReferencedSOPInstanceUID)


# ---- the spoof: a known UID with other content ---------------------------------------------------

@pytest.mark.slow
def test_a_spoofed_uid_keeps_the_genuine_instance_as_a_conflict_never_success(tmp_path, monkeypatch):
    archive = Archive()
    genuine, forged = genuine_instance(), forged_instance(tmp_path)
    uid = str(pydicom.dcmread(genuine, stop_before_pixels=True).SOPInstanceUID)
    try:
        with Node(tmp_path / "node", monkeypatch, archive.port, allow=["CT01"]) as node:
            # The spoofer, on this machine, claims CT01: it is marked and forwarded (loopback is
            # this machine's own; off loopback it would be refused, see below).
            assert send(pydicom.dcmread(forged), node.port, "CT01") == 0x0000
            wait_for(lambda: len(archive.stored) == 1, 60, "the forged instance in the archive")
            # The genuine modality (dcmtk) sends the real instance: a failure, never success.
            sent = storescu(genuine, node.port, "CT01")
            assert sent.returncode != 0, sent.stdout + sent.stderr
            conflicts = node.of("conflict")
            assert len(conflicts) == 1 and conflicts[0]["sop_instance_uid"] == uid
            assert conflicts[0]["calling_ae_title"] == "CT01" and conflicts[0]["first_state"] in ("marked", "done")
            kept = list((node.spool / "conflict").glob("*.dcm"))
            assert len(kept) == 1
            kept_ds, real = pydicom.dcmread(kept[0]), pydicom.dcmread(genuine)
            np.testing.assert_array_equal(kept_ds.pixel_array, real.pixel_array)  # the genuine one, whole
            assert str(kept_ds.PatientName) == str(real.PatientName)
            audit = [line for line in node.security_audit() if line["event"] == "conflict"]
            assert len(audit) == 1 and audit[0]["sop_instance_uid"] == uid and audit[0]["address"] == "127.0.0.1"
            assert node.node.spool.conflicts()[0]["sop_instance_uid"] == uid
            # The forged copy again (the spoofer retrying) is a retransmission: success, not marked twice.
            assert send(pydicom.dcmread(forged), node.port, "CT01") == 0x0000
            assert node.of("duplicate") and len(node.of("marked")) == 1
            # The genuine again: still a failure, still one kept copy.
            assert storescu(genuine, node.port, "CT01").returncode != 0
            assert len(list((node.spool / "conflict").glob("*.dcm"))) == 1 and len(node.of("conflict")) == 2
            wait_for(lambda: node.node.spool.pending() == 0, 30, "the spool to drain")
        assert node.of("stopped")[-1]["conflicts"] == 1
        assert len(archive.stored) == 1 and str(archive.stored[0].PatientName) == "Forged^Patient"
        assert original_uid(archive.stored[0]) == uid  # the conflict was never forwarded

        # A restart names the conflict again until a person resolves it.
        with Node(tmp_path / "node", monkeypatch, archive.port, allow=["CT01"]) as again:
            waiting = again.of("conflicts waiting")
            assert waiting and waiting[0]["count"] == 1 and waiting[0]["instances"][0]["sop_instance_uid"] == uid
            assert again.of("listening")[0]["conflicts"] == 1
    finally:
        archive.stop()


@pytest.mark.slow
def test_a_genuine_retransmission_is_answered_success_once_marked(tmp_path, monkeypatch):
    with Node(tmp_path / "node", monkeypatch, free_port()) as node:  # archive down: stays in the spool
        assert storescu(genuine_instance(), node.port, "CT01").returncode == 0, node.events
        assert storescu(genuine_instance(), node.port, "CT01").returncode == 0, node.events
        assert len(node.of("marked")) == 1 and node.of("duplicate") and not node.of("conflict")
        assert not list((node.spool / "conflict").iterdir())


@pytest.mark.slow
def test_a_spoofed_unmarkable_instance_first_cannot_make_the_genuine_one_vanish(tmp_path, monkeypatch):
    # A 4x4 image under the genuine UID fails to mark; the genuine instance after it was marked
    # under the failure's record, never forwarded, and removed at the next restart.
    archive = Archive()
    genuine = pydicom.dcmread(genuine_instance())
    spoof = pydicom.dcmread(genuine_instance())
    spoof.Rows = spoof.Columns = 4
    spoof.PixelData = bytes(32)
    try:
        with Node(tmp_path / "node", monkeypatch, archive.port, allow=["CT01"]) as node:
            assert send(spoof, node.port, "CT01") == 0xC000
            assert send(genuine, node.port, "CT01") == 0xC000  # a failure, never success
            assert len(node.of("conflict")) == 1 and not node.of("marked")
            kept = pydicom.dcmread(next((node.spool / "conflict").glob("*.dcm")))
            np.testing.assert_array_equal(kept.pixel_array, genuine.pixel_array)  # kept whole for a person
            assert send(spoof, node.port, "CT01") == 0xC000  # the spoof again: still a failure
    finally:
        archive.stop()


@pytest.mark.slow
def test_instances_the_archive_cannot_take_never_stop_the_forwarder(tmp_path, monkeypatch):
    # One MR to a CT-only archive killed the forwarding thread: every later instance was answered
    # success, marked, and never sent. A data set without a SOP Class UID did the same.
    from watermark_cli.serve import node as node_module

    archive = Archive(classes=[str(pydicom.dcmread(genuine_instance(), stop_before_pixels=True).SOPClassUID)])
    try:
        with Node(tmp_path / "node", monkeypatch, archive.port, allow=["CT01"]) as node:
            classless = pydicom.dcmread(clinical_file("CT_small.dcm"))
            del classless.SOPClassUID
            assert send_file(classless, tmp_path, node.port, "CT01") == 0xC000
            assert send(pydicom.dcmread(clinical_file("MR-SIEMENS-DICOM-WithOverlays.dcm")), node.port, "CT01") == 0x0000
            assert send(pydicom.dcmread(genuine_instance()), node.port, "CT01") == 0x0000
            wait_for(lambda: len(archive.stored) == 1, 60, "the CT in the archive")
            wait_for(lambda: node.of("not forwarded"), 60, "the MR set aside")
            assert "no presentation context" in node.of("not forwarded")[0]["why"]
            assert str(archive.stored[0].Modality) == "CT" and len(list((node.spool / "failed").glob("*.dcm"))) == 1

            def broken(*_, **__):
                raise RuntimeError("a fault of wm's own")

            monkeypatch.setattr(node_module, "embed_file", broken)  # not the input's fault: one failure
            assert send(pydicom.dcmread(clinical_file("CT_small.dcm")), node.port, "CT01") == 0xC000
            assert "unexpected RuntimeError" in node.of("failed")[-1]["why"]
    finally:
        archive.stop()


@pytest.mark.slow
def test_failures_keep_at_most_the_spool_s_bound_of_instances_and_stop_ends_idle_associations(tmp_path,
                                                                                            monkeypatch):
    # Failed instances were kept whole without bound (5 x 20 MB past a bound of 2), and a peer
    # echoing on an idle association kept the stopped node's process alive for minutes.
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    node = Node(tmp_path / "node", monkeypatch, free_port(), allow=["CT01"], max_spool_instances=2)
    with node:
        for index in range(3):
            tiny = pydicom.dcmread(genuine_instance())
            tiny.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{index + 10}"
            tiny.Rows = tiny.Columns = 4
            tiny.PixelData = bytes(32)
            assert send(tiny, node.port, "CT01") == 0xC000
        failed = node.spool / "failed"
        assert len(list(failed.glob("*.json"))) == 3 and len(list(failed.glob("*.dcm"))) == 2
        assert sum(not json.loads(p.read_text()).get("instance_kept", True) for p in failed.glob("*.json")) == 1
        assert send(pydicom.dcmread(genuine_instance()), node.port, "CT01") == 0x0000  # 512²: within the bound
        ae = AE(ae_title="CT01")
        ae.add_requested_context(Verification)
        idle = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert idle.is_established
    # leaving the block stopped the node: the idle association was aborted, not waited for
    wait_for(lambda: not idle.is_alive(), 10, "the idle association to be aborted")


@pytest.mark.slow
def test_an_instance_larger_than_the_node_s_pixel_bound_is_refused_before_decoding(tmp_path, monkeypatch):
    # A marking peaks near 140 bytes a pixel: the command line's bound of 10^8 pixels let one
    # instance take about 15 GB of the node. The node's own bound (max_pixels) is checked from the header.
    with Node(tmp_path / "node", monkeypatch, free_port(), allow=["CT01"], max_pixels=200_000) as node:
        assert send(pydicom.dcmread(genuine_instance()), node.port, "CT01") == 0xC000  # 262,144 pixels
        assert "262,144" in node.of("failed")[0]["why"] or "262144" in node.of("failed")[0]["why"]


@pytest.mark.slow
def test_one_caller_holding_associations_open_leaves_room_for_another(tmp_path, monkeypatch):
    # Four idle associations (kept alive by C-ECHO) from one caller took every slot: a genuine
    # sender was rejected for as long as they were held.
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    def associate(calling: str):
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        return ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)

    with Node(tmp_path / "node", monkeypatch, free_port(), allow=["CT01", "CT02"], workers=1) as node:
        held = [associate("CT01") for _ in range(6)]
        assert [a.is_established for a in held] == [True] * 4 + [False] * 2  # 5 slots, one kept from CT01
        assert all(a.is_rejected for a in held[4:])
        other = associate("CT02")
        assert other.is_established and other.send_c_echo().Status == 0
        for association in [*held, other]:
            if association.is_established:
                association.release()


def send_file(ds: pydicom.Dataset, folder: Path, port: int, calling: str) -> int | str:
    """C-STORE `ds` from a file, the context taken from its file meta and the data set sent as it
    is (pynetdicom's chunked sending): what a peer does to send a data set that names no class."""
    from pynetdicom import AE, _config

    path = folder / "sent.dcm"
    ds.save_as(path, enforce_file_format=False)
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 30
    ae.add_requested_context(ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID)
    saved, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    try:
        status = assoc.send_c_store(path)
        return int(status.Status) if "Status" in status else "no response"
    finally:
        assoc.release()
        _config.STORE_SEND_CHUNKED_DATASET = saved


# ---- callers beyond loopback ------------------------------------------------------------------

@pytest.mark.slow
def test_a_caller_without_credentials_is_refused_off_loopback(tmp_path, monkeypatch):
    outside = outside_address()
    if outside is None:
        pytest.skip("no non-loopback interface to call from")
    genuine = pydicom.dcmread(genuine_instance())
    with Node(tmp_path / "node", monkeypatch, free_port(), host="0.0.0.0", allow=["CT01"],
              allow_addresses=["198.51.100.7"]) as node:
        # The spoofer knows the AE title, but calls from an address not on the list.
        assert send(genuine, node.port, "CT01", host=outside) == "rejected"
        rejected = node.of("rejected")
        assert rejected and rejected[0]["address"] == outside and rejected[0]["calling_ae_title"] == "CT01"
        assert [line["why"] for line in node.security_audit()] == ["address not allowed"]
        # The genuine sender on this machine (dcmtk) is served.
        assert storescu(genuine_instance(), node.port, "CT01").returncode == 0
        assert len(node.of("received")) == 1
    # The same address on the list is served.
    with Node(tmp_path / "listed", monkeypatch, free_port(), host="0.0.0.0", allow_addresses=[f"{outside}/32"]) as node:
        assert send(genuine, node.port, "ANY", host=outside) == 0x0000


@pytest.mark.slow
def test_mutual_tls_binds_each_certificate_to_its_ae_title(tmp_path, monkeypatch):
    outside = outside_address() or "127.0.0.1"
    authority, stranger = Authority(tmp_path, "hospital"), Authority(tmp_path, "stranger")
    node_identity = authority.issue("wm-node", addresses=("127.0.0.1", outside))
    ct01, mr02 = authority.issue("ct01"), authority.issue("mr02")
    rogue = stranger.issue("rogue")
    forged = pydicom.dcmread(forged_instance(tmp_path))
    genuine = pydicom.dcmread(genuine_instance())
    with Node(tmp_path / "node", monkeypatch, free_port(), host="0.0.0.0",
              tls={"certificate": str(node_identity[1]), "private_key": str(node_identity[0]),
                   "ca_certificates": str(authority.pem), "clients": {"CT01": ct01[2], "MR02": mr02[2]}}) as node:
        # MR02's real certificate cannot speak for CT01: rejected, audited.
        assert send(forged, node.port, "CT01", host=outside, tls=client_tls(authority, mr02)) == "rejected"
        assert node.security_audit()[-1]["why"] == "client certificate not bound to this calling AE title"
        # An AE title with no bound certificate, a certificate from another CA, no certificate,
        # no TLS at all: none gets in.
        assert send(forged, node.port, "CT99", host=outside, tls=client_tls(authority, ct01)) == "rejected"
        assert send(forged, node.port, "CT01", host=outside, tls=client_tls(authority, rogue)) == "no association"
        assert send(forged, node.port, "CT01", host=outside, tls=client_tls(authority, None)) == "no association"
        assert send(forged, node.port, "CT01", host=outside) == "no association"
        assert not node.of("received")
        # CT01 with its own certificate is served.
        assert send(genuine, node.port, "CT01", host=outside, tls=client_tls(authority, ct01)) == 0x0000
        assert len(node.of("marked")) == 1
        assert [line["calling_ae_title"] for line in node.security_audit()] == ["CT01", "CT99"]


# ---- the archive's certificate ------------------------------------------------------------------

@pytest.mark.slow
def test_a_wrong_archive_certificate_keeps_the_instance_until_the_real_archive(tmp_path, monkeypatch):
    authority, stranger = Authority(tmp_path, "hospital"), Authority(tmp_path, "stranger")
    real_identity, impostor_identity = authority.issue("pacs"), stranger.issue("impostor")
    impostor = Archive(impostor_identity)  # listens where the archive should be
    try:
        for name, forward_tls in (("pinned", {"certificate_sha256": real_identity[2]}),
                                  ("ca", {"ca_certificates": str(authority.pem)})):
            with Node(tmp_path / name, monkeypatch, impostor.port, forward_tls=forward_tls) as node:
                assert storescu(genuine_instance(), node.port, "CT01").returncode == 0
                wait_for(lambda: node.of("forward failed"), 60, "a refused forward")
            assert impostor.stored == [], name
            assert len(list((node.spool / "marked").glob("*.dcm"))) == 1, name  # nothing lost
            if name == "pinned":
                assert "not the pinned one" in node.of("forward failed")[0]["why"]
    finally:
        impostor.stop()
    # The real archive on the same configuration: what waited in the spool arrives.
    for name in ("pinned", "ca"):
        real = Archive(real_identity)
        try:
            config = yaml.safe_load((tmp_path / name / "serve.yaml").read_text())
            config["forward"]["port"] = real.port
            with Node(tmp_path / name, monkeypatch, real.port, forward_tls=config["forward_tls"]) as node:
                wait_for(lambda: len(real.stored) == 1, 60, f"the spooled instance in the real archive ({name})")
                wait_for(lambda: node.of("forwarded"), 30, "the forwarded event")
            assert original_uid(real.stored[0]) == str(pydicom.dcmread(genuine_instance()).SOPInstanceUID)
        finally:
            real.stop()


# ---- configuration -----------------------------------------------------------------------------

def checked(tmp_path: Path, **settings):
    from watermark_cli.serve.config import load_config

    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump({"forward": "127.0.0.1:4242:PACS", **settings}))
    return load_config(path).check()


def refusal(tmp_path: Path, **settings) -> str:
    with pytest.raises(BadInputError) as raised:
        checked(tmp_path, **settings)
    message = str(raised.value)
    assert "\n" not in message
    return message


def test_listening_beyond_loopback_needs_an_address_list_or_mutual_tls(tmp_path):
    assert checked(tmp_path).host == "127.0.0.1"
    for host in ("0.0.0.0", "::", "192.0.2.2", "node.hospital.example"):
        assert f"host {host} listens beyond loopback" in refusal(tmp_path, host=host, allow=["CT01"])
    assert checked(tmp_path, host="0.0.0.0", allow_addresses=["10.1.2.0/24"]).host == "0.0.0.0"
    for host in ("localhost", "127.0.0.2", "::1"):
        assert checked(tmp_path, host=host).host == host
    authority = Authority(tmp_path, "hospital")
    node_key, node_cert, _ = authority.issue("wm-node")
    tls = {"certificate": str(node_cert), "private_key": str(node_key), "ca_certificates": str(authority.pem)}
    # A CA alone authenticates a certificate, not an AE title: still refused.
    assert "listens beyond loopback" in refusal(tmp_path, host="0.0.0.0", tls=tls)
    assert checked(tmp_path, host="0.0.0.0", tls={**tls, "clients": {"CT01": "AB:" * 31 + "CD"}}).mutual_tls
    assert "tls.clients needs tls.ca_certificates" in refusal(
        tmp_path, tls={"certificate": str(node_cert), "private_key": str(node_key), "clients": {"CT01": "ab" * 32}})
    assert "tls: unknown key(s) verify_client" in refusal(tmp_path, tls={**tls, "verify_client": False})
    assert "tls.clients CT01: 'nope' is not a SHA-256 fingerprint" in refusal(
        tmp_path, tls={**tls, "clients": {"CT01": "nope"}})
    assert "allow MR02 has no certificate in tls.clients" in refusal(
        tmp_path, allow=["CT01", "MR02"], tls={**tls, "clients": {"CT01": "ab" * 32}})


def test_the_cli_refuses_a_listener_without_credentials_before_listening(tmp_path):
    from conftest import run_wm_here

    result = run_wm_here("serve", "--host", "0.0.0.0", "--forward", "127.0.0.1:4242:PACS", "--allow", "CT01",
                         "--spool", tmp_path / "spool")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "host 0.0.0.0 listens beyond loopback" in lines[0], result.stderr
    assert not (tmp_path / "spool").exists()


def test_tls_towards_the_archive_needs_a_ca_or_a_pinned_certificate(tmp_path):
    assert "forward_tls needs forward_tls.ca_certificates or forward_tls.certificate_sha256" in refusal(
        tmp_path, forward_tls=True)
    assert "forward_tls needs" in refusal(tmp_path, forward_tls={})
    assert "forward_tls.certificate_sha256 'abc'" in refusal(tmp_path, forward_tls={"certificate_sha256": "abc"})
    assert "forward_tls: unknown key(s) verify" in refusal(tmp_path, forward_tls={"verify": False,
                                                                                  "certificate_sha256": "ab" * 32})
    assert "does not exist" in refusal(tmp_path, forward_tls={"ca_certificates": str(tmp_path / "none.pem")})
    assert checked(tmp_path, forward_tls={"certificate_sha256": "AB" * 32}).forward_tls.certificate_sha256


@pytest.mark.parametrize("settings, named", [
    ({"port": 0}, "port 0"), ({"port": 70000}, "port 70000"), ({"port": 11112.5}, "port 11112.5"),
    ({"port": True}, "port True"), ({"port": "eleven"}, "port 'eleven'"),
    ({"forward": {"host": "pacs", "port": 0, "ae_title": "PACS"}}, "forward.port 0"),
    ({"forward": {"host": "pacs", "port": 104.5, "ae_title": "PACS"}}, "forward.port 104.5"),
    ({"workers": 0}, "workers 0"), ({"workers": 65}, "workers 65"), ({"workers": 1.5}, "workers 1.5"),
    ({"max_spool_instances": 0}, "max_spool_instances 0"), ({"max_spool_instances": -5}, "max_spool_instances -5"),
    ({"max_pixels": 100}, "max_pixels 100"), ({"max_pixels": 2.5e7}, "max_pixels 25000000.0"),
    ({"retry_max_seconds": 0}, "retry_max_seconds 0"), ({"retry_max_seconds": float("nan")}, "retry_max_seconds nan"),
    ({"retry_max_seconds": float("inf")}, "retry_max_seconds inf"), ({"retry_max_seconds": 1e9}, "retry_max_seconds"),
    ({"psnr_min": float("nan")}, "psnr_min"), ({"psnr_min": 500}, "psnr_min"), ({"psnr_min": 0}, "psnr_min"),
    ({"allow_addresses": ["10.0.0.300"]}, "allow_addresses '10.0.0.300'"),
    ({"allow": ["A" * 17]}, "allow"),
])
def test_every_number_in_the_config_is_validated(settings, named, tmp_path):
    assert named in refusal(tmp_path, **settings)


def test_a_bad_number_is_one_line_and_exit_2_from_the_cli(tmp_path):
    from conftest import run_wm_here

    config = tmp_path / "serve.yaml"
    config.write_text("forward: 127.0.0.1:4242:PACS\nretry_max_seconds: .nan\n")
    result = run_wm_here("serve", "--check", "--config", config, "--spool", tmp_path / "spool")
    lines = result.stderr.strip().splitlines()
    assert result.code == 2 and len(lines) == 1 and "retry_max_seconds" in lines[0], result.stderr


def test_numbers_written_as_text_are_read_as_numbers(tmp_path):
    config = checked(tmp_path, port="11113", retry_max_seconds="2.5", workers="3")
    assert (config.port, config.retry_max_seconds, config.workers) == (11113, 2.5, 3)
