"""`wm serve`: a DICOM node (pynetdicom) that marks every image on its way to the archive.

C-STORE in → the instance is written to the spool and fsynced → marked with the default
(view-floor) settings, the mark read back and the written file re-measured (marking.files) →
"success" to the sender → forwarded by C-STORE to the destination, retried with backoff while
the destination is down → done. What cannot be marked (colour, too small, unreadable) gets a
DIMSE failure status (0xC000, with the reason as Error Comment) and is audited, or is forwarded
unmarked when configured so. A full spool answers 0xA700 (out of resources). One JSON line per
event on stdout; SIGTERM stops accepting, drains what is in flight and exits 0.

Who may connect is `access.CallerPolicy`'s to decide, at association request, before any data:
loopback callers, callers from `allow_addresses`, or callers whose mutual-TLS certificate is the
one bound to their calling AE title; `allow` narrows the AE titles further. Every refusal is
logged and audited (SPOOL/security.jsonl).

The same SOP Instance UID twice: with the same content (data set and transfer syntax, SHA-256)
it is a retransmission, answered success and not marked again; with other content it is a
conflict: the second instance is kept in SPOOL/conflict/ (not forwarded, not dropped), the
sender is answered a failure (0xC000 with the reason: never success, and not 0x0111 "duplicate",
which some senders take for "already stored"), and it is logged, audited and counted in the
node's reports until a person resolves it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from ..errors import BadInputError, WmError
from ..io.audit import AuditLog
from ..io.isolation import IsolatedReader
from ..jsonout import write_json_line
from ..keys import key_material
from ..marking.batch import Written, audit_line, recover_unaudited
from ..marking.files import EmbedSettings, embed_file
from ..marking.image import codec_for
from ..model.device import model_device
from ..model.store import load_model
from ..quality import QualityFloor
from .access import CallerPolicy, REJECTED_PERMANENT, SERVICE_USER, archive_refusal, archive_tls_arguments, \
    peer_certificate, server_tls_context
from .config import ServeConfig
from .spool import Spool

SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000
_FORWARD_BATCH = 32  # instances read and sent per association
_MARKING_GRACE_SECONDS = 300.0  # at stop: how long instances being marked may take to finish
# PS3.8 A-ASSOCIATE-RJ: rejected-transient, by the presentation service provider, local limit exceeded.
REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED = 0x02, 0x03, 0x02


def log_event(event: str, **facts) -> None:
    """One JSON line on stdout, flushed (a log collector reads it line by line)."""
    write_json_line({"time": _now(), "event": event, **facts})


class MarkingNode:
    """The node's state: configuration, spool, model, and the forwarding thread."""

    def __init__(self, config: ServeConfig, key: bytes | None) -> None:
        self.config = config
        self.key = key
        self.spool = Spool(config.spool, config.max_spool_instances)
        self.loaded = load_model(config.model, model_device(config.device))
        self.codec = codec_for(self.loaded, key)
        self.audit = AuditLog(Path(config.spool) / "audit.jsonl")
        # One isolated decoder process per marking slot: a decoder that crashes on a hostile
        # instance fails that instance (a DIMSE failure), never the node.
        import queue

        self.readers: queue.Queue = queue.Queue()
        for _ in range(config.workers):
            self.readers.put(IsolatedReader(config.max_pixels).__enter__())
        self.marking_slots = threading.BoundedSemaphore(config.workers)
        self.policy = CallerPolicy(config)
        # Two associations may deliver the same instance at once: claiming its name under this
        # lock makes the second one a retransmission or a conflict, never a second marking.
        self._claims = threading.Lock()
        self._in_progress: dict[str, str] = {}  # name -> content digest of the copy being received
        self.stopping = threading.Event()
        self.wake_forwarder = threading.Event()
        self.forwarder = threading.Thread(target=self._forward_loop, name="wm-forwarder", daemon=True)
        self.server = None
        # as many associations as marking slots twice over, and one more that no single caller may take
        self._associations = max(4, config.workers * 2) + 1

    # ---- the message -------------------------------------------------------------------------

    def message_for(self, ds) -> bytes:
        def keyed(uid_keyword: str) -> str:
            uid = str(ds.get(uid_keyword, "") or "")
            # Under the key's material (a passphrase stretched): a message seen in a log or an audit
            # line, with the UID it names, must not be a quick test of guessed passphrases.
            return hmac.new(key_material(self.key), uid.encode("ascii", "replace"), hashlib.sha256).hexdigest()[:12]

        return self.config.message.format(random=secrets.token_hex(6), study=keyed("StudyInstanceUID"),
                                          instance=keyed("SOPInstanceUID")).encode("utf-8")

    # ---- association control -----------------------------------------------------------------

    def _on_requested(self, event) -> None:
        """Reject (permanent) before any data is accepted when the policy refuses the caller."""
        requestor = event.assoc.requestor
        title = str(requestor.primitive.calling_ae_title).strip()  # the request, not yet negotiated
        refusal = self.policy.refusal(title, requestor.address, peer_certificate(event.assoc))
        if refusal is None:
            refusal = self._caller_over_its_share(event.assoc, title, requestor.address)
        if refusal is None:
            return
        why, reason, *transient = refusal
        facts = {"calling_ae_title": title, "address": requestor.address, "why": why}
        log_event("rejected", **facts)
        self.spool.audit_security({"time": _now(), "event": "rejected", **facts})
        if transient:
            event.assoc.acse.send_reject(REJECTED_TRANSIENT, SERVICE_PROVIDER_PRESENTATION, reason)
        else:
            event.assoc.acse.send_reject(REJECTED_PERMANENT, SERVICE_USER, reason)
        # As pynetdicom's own rejection does: wait until the A-ASSOCIATE-RJ has left, or the socket
        # is closed under it and the caller sees an abort instead of the reason.
        event.assoc.kill()

    def _caller_over_its_share(self, association, title: str, address: str) -> tuple[str, int, bool] | None:
        """One caller (address and AE title) holds at most all associations but one: a sender that
        keeps associations open (idle, or echoing) cannot shut every other sender out."""
        if self.server is None:
            return None
        held = sum(1 for other in self.server.active_associations
                   if other is not association and other.requestor.address == address
                   and str(other.requestor.ae_title).strip() == title)
        if held < self._associations - 1:
            return None
        return f"holds {held} associations, the most one caller may", LOCAL_LIMIT_EXCEEDED, True

    # ---- C-STORE -----------------------------------------------------------------------------

    def _on_store(self, event) -> int | object:
        if self.stopping.is_set():
            return OUT_OF_RESOURCES
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if not uid:
            return _failure(CANNOT_UNDERSTAND, "no SOP Instance UID")
        if str(ds.get("SOPClassUID", "") or "") != str(event.context.abstract_syntax):
            # the forwarder offers the archive the data set's own class: none, or another than the
            # one negotiated, would be sent under a context nobody agreed to
            return _failure(CANNOT_UNDERSTAND, "SOP Class UID missing or not the presentation context's")
        name = self.spool.name(uid)
        digest = content_digest(event)
        with self._claims:
            if name in self._in_progress:
                state, known = "receiving", self._in_progress[name]
            else:
                state = self.spool.state_of(name)
                known = self.spool.content_of(name) if state is not None else None
            # A UID that failed is known too: another instance under it (the genuine one after a
            # spoofed, unmarkable one) is kept as a conflict, never marked over the failure's record.
            if state in ("receiving", "received", "marked", "done", "failed"):
                if known == digest and state == "failed":
                    return _failure(CANNOT_UNDERSTAND, "wm could not mark this instance when first received")
                if known == digest:  # the very instance again: never a second marked instance
                    log_event("duplicate", sop_instance_uid=uid, state=state)
                    return SUCCESS
                return self._conflict(event, name, uid, digest, known, state)
            if self.spool.is_full():
                log_event("refused", sop_instance_uid=uid, why="spool full")
                return _failure(OUT_OF_RESOURCES, "wm spool is full; retry later")
            self._in_progress[name] = digest
        try:
            self.spool.record_content(name, digest)
            received = self.spool.receive(name, event.encoded_dataset())
            log_event("received", sop_instance_uid=uid,
                      calling_ae_title=str(event.assoc.requestor.ae_title).strip())
            status = self._mark(name, uid, received, ds)
        finally:
            with self._claims:
                self._in_progress.pop(name, None)
        self.wake_forwarder.set()
        return SUCCESS if status is None else status

    def _conflict(self, event, name: str, uid: str, digest: str, known: str | None, state: str):
        """A second instance claiming a spooled SOP Instance UID with other content (or content
        that cannot be compared): kept, reported, audited, and answered a failure."""
        if self.spool.is_full():
            log_event("refused", sop_instance_uid=uid, why="spool full (conflict not kept)")
            return _failure(OUT_OF_RESOURCES, "wm spool is full; retry later")
        requestor = event.assoc.requestor
        facts = {"time": _now(), "event": "conflict", "sop_instance_uid": uid,
                 "calling_ae_title": str(requestor.ae_title).strip(), "address": requestor.address,
                 "first_state": state, "first_sha256": known, "conflict_sha256": digest}
        kept = self.spool.keep_conflict(name, digest, event.encoded_dataset(), facts)
        self.spool.audit_security({**facts, "kept": kept.name})
        log_event("conflict", **{k: v for k, v in facts.items() if k not in ("time", "event")}, kept=kept.name,
                  conflicts=len(self.spool.conflicts()))
        return _failure(CANNOT_UNDERSTAND, "wm: UID already received with other content; kept as conflict")

    def _mark(self, name: str, uid: str, received: Path, ds) -> object | None:
        """Mark one received instance; None on success, else the failure status to answer."""
        message = self.message_for(ds)
        settings = self._settings(message)
        with self.marking_slots:
            reader = self.readers.get()
            try:
                result = embed_file(received, self.spool.path("marked", name), settings, self.loaded, self.codec,
                                    read=reader.read)
            except Exception as error:  # WmError: the input's fault; anything else: wm's, for this instance only
                reason = (str(error) if isinstance(error, WmError)
                          else f"unexpected {type(error).__name__}: {error}").replace(str(received), "instance")
                if self.config.forward_unmarkable:
                    import os

                    os.replace(received, self.spool.path("marked", name))
                    log_event("unmarkable", sop_instance_uid=uid, why=reason, forwarded_unmarked=True)
                    return None
                self.spool.failed(name, {"sop_instance_uid": uid, "why": reason})
                log_event("failed", sop_instance_uid=uid, why=reason)
                return _failure(CANNOT_UNDERSTAND, f"wm cannot mark this instance: {reason}"[:1024])
            finally:
                self.readers.put(reader)

        self.audit.append(audit_line(result, message, self.codec, sop_instance_uid=uid))
        self.spool.marked(name)
        log_event("marked", sop_instance_uid=uid, psnr=result.psnr, binding_view=result.binding_view,
                  psnr_min=result.psnr_min, message=message.decode("utf-8", "replace"))
        return None

    def _settings(self, message: bytes) -> EmbedSettings:
        """The node marks with the default settings: the view floor, verified, with a record."""
        return EmbedSettings(payload=message, floor=QualityFloor(self.config.psnr_min), model=self.config.model,
                             key=self.key, max_pixels=self.config.max_pixels)

    # ---- forwarding --------------------------------------------------------------------------

    def _forward_loop(self) -> None:
        delay = 1.0
        while True:
            waiting = self.spool.waiting("marked")
            if not waiting:
                if self.stopping.is_set():
                    return
                self.wake_forwarder.wait(timeout=1.0)
                self.wake_forwarder.clear()
                continue
            try:
                sent = self._forward(waiting)
            except Exception as error:  # the forwarder never dies: what is marked waits for the next try
                log_event("forward failed", why=f"unexpected {type(error).__name__}: {error}", waiting=len(waiting))
                sent = 0
            if sent:
                delay = 1.0
                continue
            if self.stopping.is_set() and self._drain_deadline_passed():
                log_event("stopped with instances not forwarded", waiting=len(waiting))
                return
            time.sleep(delay)
            delay = min(delay * 2.0, self.config.retry_max_seconds)

    def _drain_deadline_passed(self) -> bool:
        return time.monotonic() > self._drain_deadline

    def _forward(self, names: list[str]) -> int:
        """Send every named marked instance over one association; how many went through."""
        import pydicom
        from pynetdicom import AE

        destination = self.config.forward
        # A bounded batch per association: a spool of large instances is never all in memory.
        files = {name: self.spool.path("marked", name) for name in names[:_FORWARD_BATCH]}
        datasets = {}
        for name, path in files.items():
            try:
                datasets[name] = pydicom.dcmread(path)
            except FileNotFoundError:
                continue
            except Exception as error:  # a file the node wrote and cannot read back: set aside, never resent
                self._not_forwarded(name, f"unreadable marked file: {type(error).__name__}: {error}")
                continue
            if not datasets[name].get("SOPClassUID"):
                self._not_forwarded(name, "no SOP Class UID to offer the archive")
                del datasets[name]
        if not datasets:
            return 0
        ae = AE(ae_title=self.config.ae_title)
        for sop_class, syntax in sorted({(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID) for ds in datasets.values()}):
            ae.add_requested_context(sop_class, syntax)
        try:
            assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                                 tls_args=archive_tls_arguments(self.config))
        except Exception as error:  # pynetdicom raises for refused connections and TLS failures
            log_event("forward failed", why=f"{type(error).__name__}: {error}", waiting=len(datasets))
            return 0
        if not assoc.is_established:
            log_event("forward failed", why="association not established", waiting=len(datasets))
            return 0
        refusal = archive_refusal(self.config, assoc)
        if refusal is not None:  # checked before any instance goes out; they stay in the spool
            assoc.abort()
            log_event("forward failed", why=refusal, waiting=len(datasets))
            return 0
        sent = 0
        try:
            for name, ds in datasets.items():
                try:
                    status = assoc.send_c_store(ds)
                except ValueError as error:  # pynetdicom: the archive accepted no context for its class
                    self._not_forwarded(name, f"the archive accepts no presentation context for it ({error})")
                    continue
                code = getattr(status, "Status", None)
                if code is None:
                    log_event("forward failed", why="no response (connection lost)", waiting=len(datasets) - sent)
                    break
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):  # success, and warnings (stored)
                    log_event("forward failed", sop_instance_uid=str(ds.SOPInstanceUID), status=f"0x{code:04X}")
                    continue
                original = ds.SourceImageSequence[-1].ReferencedSOPInstanceUID if "SourceImageSequence" in ds else None
                self.spool.done(name, {"sop_instance_uid": str(original), "marked_sop_instance_uid":
                                       str(ds.SOPInstanceUID), "status": f"0x{code:04X}"})
                log_event("forwarded", sop_instance_uid=str(original), marked_sop_instance_uid=str(ds.SOPInstanceUID),
                          destination=destination.ae_title)
                sent += 1
        finally:
            if assoc.is_established:
                assoc.release()
        return sent

    def _not_forwarded(self, name: str, why: str) -> None:
        """A marked instance no later try can send: set aside in failed/, for a person, so that
        it neither blocks the instances behind it nor is retried for ever."""
        self.spool.not_forwarded(name, {"why": why})
        log_event("not forwarded", why=why)

    # ---- life cycle --------------------------------------------------------------------------

    def recover(self) -> None:
        """After a restart: audit what was marked but not audited, resolve instances left in two
        states, mark what was received."""
        self._audit_unaudited()
        self.spool.resolve_doubles()
        for name in self.spool.waiting("received"):
            import pydicom

            path = self.spool.path("received", name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception as error:
                self.spool.failed(name, {"why": f"unreadable after restart: {error}"})
                continue
            log_event("resumed", sop_instance_uid=str(ds.get("SOPInstanceUID", "")))
            self._mark(name, str(ds.get("SOPInstanceUID", "")), path, ds)

    def _audit_unaudited(self) -> None:
        """A kill between writing a marked file and its audit line leaves both the received and
        the marked copy: the marked one is audited from the pair when it holds this instance's
        message (templates without {random} give the same message again), else it is removed and
        the instance marked anew (it was never forwarded)."""
        import pydicom

        def written() -> Iterator[Written]:
            for name in self.spool.names("received"):
                marked = self.spool.path("marked", name)
                if marked.exists():
                    received = self.spool.path("received", name)
                    ds = pydicom.dcmread(received, stop_before_pixels=True)
                    yield Written(received, marked, self._settings(self.message_for(ds)),
                                  {"sop_instance_uid": str(ds.get("SOPInstanceUID", ""))})

        reader = self.readers.get()
        try:
            for item, result in recover_unaudited(written(), self.audit, self.loaded, self.codec, reader.read):
                if result is None:
                    item.output.unlink()  # not this instance's mark: it is marked anew (never forwarded)
                    continue
                log_event("marked", sop_instance_uid=item.extra["sop_instance_uid"], psnr=result.psnr,
                          binding_view=result.binding_view, psnr_min=result.psnr_min,
                          message=item.settings.payload.decode("utf-8", "replace"), recovered=True)
        finally:
            self.readers.put(reader)

    def serve(self) -> None:
        """Run until SIGTERM or SIGINT; then drain and return."""
        import signal

        self.start()
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.wait(0.5):
            pass
        self.stop()

    def start(self) -> None:
        """Recover the spool, start forwarding and listen; returns once listening."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        self.recover()
        self._drain_deadline = float("inf")
        self.forwarder.start()
        ae = AE(ae_title=self.config.ae_title)
        ae.add_supported_context(Verification)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.maximum_associations = self._associations
        handlers = [(evt.EVT_REQUESTED, self._on_requested), (evt.EVT_C_STORE, self._on_store),
                    (evt.EVT_C_ECHO, lambda event: SUCCESS)]
        try:
            self.server = ae.start_server((self.config.host, self.config.port), block=False,
                                          evt_handlers=handlers, ssl_context=server_tls_context(self.config))
        except OSError as error:
            self.stopping.set()
            raise BadInputError(f"cannot listen on {self.config.host}:{self.config.port} "
                                f"({error.strerror or error})") from None
        self.report_conflicts()
        log_event("listening", host=self.config.host, port=self.config.port, ae_title=self.config.ae_title,
                  forward=f"{self.config.forward.host}:{self.config.forward.port}:{self.config.forward.ae_title}",
                  callers=self._callers_in_words(), conflicts=len(self.spool.conflicts()))

    def stop(self, drain_seconds: float = 30.0) -> None:
        """Stop accepting, drain what is in flight (the forwarder for `drain_seconds` at most:
        what it cannot send stays in the spool), close."""
        log_event("stopping", in_spool=self.spool.pending(), conflicts=len(self.spool.conflicts()))
        self.stopping.set()
        if self.server is not None:
            associations = list(self.server.active_associations)
            self.server.shutdown()  # no new associations; those open stay until they end or are aborted
            # Instances being marked finish (their sender hears nothing and resends: a duplicate, answered
            # success); then associations left open, idle or echoing, are aborted so the process can end.
            deadline = time.monotonic() + _MARKING_GRACE_SECONDS
            while self._in_progress and time.monotonic() < deadline:
                time.sleep(0.1)
            for association in associations:
                if association.is_alive():
                    association.abort()
        self._drain_deadline = time.monotonic() + drain_seconds
        self.wake_forwarder.set()
        if self.forwarder.is_alive():
            self.forwarder.join()
        while not self.readers.empty():
            self.readers.get().close()
        log_event("stopped", in_spool=self.spool.pending(), conflicts=len(self.spool.conflicts()))

    def report_conflicts(self) -> None:
        """Conflicts left from earlier runs are named at every start until a person resolves them
        (removes their files from SPOOL/conflict/)."""
        waiting = self.spool.conflicts()
        if waiting:
            log_event("conflicts waiting", count=len(waiting),
                      instances=[{key: facts.get(key) for key in ("sop_instance_uid", "calling_ae_title", "address",
                                                                  "time")} for facts in waiting])

    def _callers_in_words(self) -> str:
        config = self.config
        gates = ["loopback"]
        if config.allow_addresses:
            gates.append("addresses " + ", ".join(config.allow_addresses))
        if config.mutual_tls:
            gates.append("mutual TLS bound to " + ", ".join(sorted(config.tls.clients)))
        titles = f"; AE titles {', '.join(config.allow)}" if config.allow else ""
        return " or ".join(gates) + titles


def content_digest(event) -> str:
    """SHA-256 of the data set as received, with its transfer syntax: the same instance sent
    again gives the same digest; one re-encoded in another transfer syntax does not, and is kept
    as a conflict for a person to judge rather than guessed to be the same."""
    digest = hashlib.sha256(str(event.context.transfer_syntax).encode("ascii", "replace") + b"\0")
    digest.update(event.encoded_dataset(include_meta=False))
    return digest.hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _failure(code: int, comment: str):
    from pydicom.dataset import Dataset

    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]  # LO
    return status
