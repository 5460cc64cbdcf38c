"""Who may send to `wm serve`, and how the node makes sure it talks to the real archive.

A calling AE title is a name any sender can type, so it is never the only gate (issue 29):

- a caller on loopback is this machine's own: accepted (the default listener is loopback only);
- beyond loopback, a caller is accepted from an address in `allow_addresses`, or under mutual
  TLS: its certificate must be signed by `tls.ca_certificates` (the TLS handshake checks that)
  *and* be the very certificate pinned for its calling AE title in `tls.clients` (SHA-256 of the
  DER certificate), so one sender's certificate cannot speak for another's AE title;
- with `allow`, the calling AE title must also be listed (a name check, on top).

Towards the archive the node checks the archive's certificate, always: against a CA bundle
(chain and host name) or a pinned SHA-256 fingerprint, compared after the handshake and before
any instance is sent.
"""

from __future__ import annotations

import hashlib
import ipaddress
import ssl

from .config import ServeConfig, normalized_fingerprint

# A-ASSOCIATE-RJ parameters (PS3.8 9.3.4): rejected-permanent, by the service user, with the
# reason that applies.
REJECTED_PERMANENT, SERVICE_USER = 0x01, 0x01
NO_REASON_GIVEN, CALLING_AE_TITLE_NOT_RECOGNIZED = 0x01, 0x03


def certificate_sha256(der: bytes | None) -> str | None:
    return hashlib.sha256(der).hexdigest() if der else None


def peer_certificate(association) -> bytes | None:
    """The DER certificate the peer presented over this association's TLS socket, if any."""
    sock = getattr(getattr(association.dul, "socket", None), "socket", None)
    if isinstance(sock, ssl.SSLSocket):
        try:
            return sock.getpeercert(binary_form=True)
        except (ValueError, OSError):
            return None
    return None


class CallerPolicy:
    """The decision on one association request: None to accept, else why it is refused and the
    A-ASSOCIATE-RJ reason to answer with."""

    def __init__(self, config: ServeConfig) -> None:
        self.allowed_titles = frozenset(config.allow)
        self.networks = config.caller_networks
        self.mutual_tls = config.mutual_tls
        self.bound_certificates = ({title: normalized_fingerprint(fp) for title, fp in config.tls.clients.items()}
                                   if self.mutual_tls else {})

    def refusal(self, calling_ae_title: str, address: str, certificate_der: bytes | None) -> tuple[str, int] | None:
        if self.allowed_titles and calling_ae_title not in self.allowed_titles:
            return "calling AE title not allowed", CALLING_AE_TITLE_NOT_RECOGNIZED
        if self.networks and not (_is_loopback(address) or self._listed(address)):
            return "address not allowed", NO_REASON_GIVEN
        if self.mutual_tls:
            expected = self.bound_certificates.get(calling_ae_title)
            if expected is None:
                return "no client certificate is bound to this calling AE title", CALLING_AE_TITLE_NOT_RECOGNIZED
            if certificate_sha256(certificate_der) != expected:
                return "client certificate not bound to this calling AE title", CALLING_AE_TITLE_NOT_RECOGNIZED
            return None
        if not (_is_loopback(address) or self._listed(address)):
            return "no credential beyond loopback (address not allowed, no mutual TLS)", NO_REASON_GIVEN
        return None

    def _listed(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if getattr(ip, "ipv4_mapped", None) is not None:  # ::ffff:10.0.0.1 on a dual-stack socket
            ip = ip.ipv4_mapped
        return any(ip.version == network.version and ip in network for network in self.networks)


def _is_loopback(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None) is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def server_tls_context(config: ServeConfig) -> ssl.SSLContext | None:
    """TLS for callers; with a CA, a certificate it signed is required of every caller."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH,
                                         cafile=str(config.tls.ca_certificates) if config.tls.ca_certificates else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls.certificate, config.tls.private_key)
    context.verify_mode = ssl.CERT_REQUIRED if config.tls.ca_certificates else ssl.CERT_NONE
    return context


def archive_tls_arguments(config: ServeConfig) -> tuple[ssl.SSLContext, str | None] | None:
    """pynetdicom's tls_args towards the destination. With a CA the handshake checks the chain and
    the host name; with only a pinned fingerprint the handshake cannot judge the (often
    self-signed) certificate, and `archive_refusal` compares it before anything is sent."""
    archive = config.forward_tls
    if archive is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if archive.ca_certificates is not None:
        context.load_verify_locations(cafile=str(archive.ca_certificates))
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
    else:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.tls is not None:  # the archive may ask for this node's certificate
        context.load_cert_chain(config.tls.certificate, config.tls.private_key)
    return context, config.forward.host


def archive_refusal(config: ServeConfig, association) -> str | None:
    """Why the archive at the other end of this association is not the configured one, or None."""
    archive = config.forward_tls
    if archive is None or archive.certificate_sha256 is None:
        return None
    presented = certificate_sha256(peer_certificate(association))
    if presented != normalized_fingerprint(archive.certificate_sha256):
        return f"the archive's certificate (SHA-256 {presented or 'none'}) is not the pinned one"
    return None
