"""The configuration of `wm serve`: a YAML file, overridden by the command line's flags.

Every key is checked before the node starts (`wm serve --check` does only that): a bad value is
one line naming the key. The key that marks is never in the file: `key_file` names a file, or
the WM_KEY variable holds it.

Who may connect (issue 29): AE titles are names anyone can type, not credentials. The node
listens on loopback unless told otherwise, and listening beyond loopback needs a credential
check: an address allow-list (`allow_addresses`) or mutual TLS whose client certificate is
bound to the calling AE title (`tls.clients`: AE title -> SHA-256 of that caller's certificate).
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..errors import BadInputError
from ..model.device import DEVICE_CHOICES
from ..quality import checked_psnr_min

#: Message templates: never patient data. {instance}: a keyed hash (HMAC-SHA256 under the marking
#: key, 12 hex digits) of the SOP Instance UID, the default: one ID per instance, meaningless
#: without the key, and the same again if the instance is marked again after a crash; {study}:
#: the same of the Study Instance UID (one ID per study); {random}: 12 random hex digits. The
#: audit log links each to its instance.
MESSAGE_FIELDS = ("instance", "study", "random")

#: The ranges every number in the config must fall in: wide enough for any real deployment,
#: narrow enough that a typo (a port of 0, a retry of a year, a million workers) is caught.
PORT_RANGE = (1, 65535)
WORKERS_RANGE = (1, 64)
SPOOL_INSTANCES_RANGE = (1, 10_000_000)
# A marking holds about 140 bytes per pixel at its peak (a 4096² CT: 2.6 GB above the node's 1.1):
# the node's bound is a quarter of a command line's, so that one instance from a sender cannot
# take the memory of a modest machine (two workers at the bound: about 9 GB). Raise it with the RAM.
SERVE_MAX_PIXELS = 32_000_000
MAX_PIXELS_RANGE = (65_536, 10_000_000_000)
RETRY_SECONDS_RANGE = (1.0, 86_400.0)

LOOPBACK_NAMES = ("localhost",)


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str


@dataclass(frozen=True)
class TlsSettings:
    """TLS for callers. With `ca_certificates` callers must present a certificate it signed;
    with `clients` too, that certificate must be the one pinned for the calling AE title."""

    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    clients: dict[str, str] = field(default_factory=dict)  # calling AE title -> SHA-256 (hex) of its certificate

    @property
    def mutual(self) -> bool:
        """Callers are authenticated: a CA-signed certificate bound to the calling AE title."""
        return self.ca_certificates is not None and bool(self.clients)


@dataclass(frozen=True)
class ArchiveTls:
    """TLS towards the destination: its certificate is always checked, against a CA bundle
    (chain and host name) or a pinned SHA-256 fingerprint. `true` in the YAML file means the CA
    of `tls.ca_certificates` (the setting's meaning before the fingerprint existed)."""

    ca_certificates: Path | None = None
    certificate_sha256: str | None = None


@dataclass(frozen=True)
class ServeConfig:
    port: int = 11112
    ae_title: str = "WM"
    host: str = "127.0.0.1"  # beyond loopback only with allow_addresses or mutual TLS
    allow: tuple[str, ...] = ()  # calling AE titles (a name, not a credential); none: any title
    allow_addresses: tuple[str, ...] = ()  # caller IP addresses or networks (CIDR) accepted beyond loopback
    forward: Destination | None = None
    spool: Path = Path("wm-spool")
    model: str | None = None
    device: str = "cpu"  # where the networks run: auto, cpu or cuda (model.device)
    key_file: Path | None = None
    workers: int = 2
    message: str = "wm-{instance}"
    psnr_min: float = 40.0
    max_spool_instances: int = 1000
    max_pixels: int = SERVE_MAX_PIXELS  # rows x columns x frames an instance may declare
    forward_unmarkable: bool = False  # forward what cannot be marked, unmarked (audited either way)
    retry_max_seconds: float = 60.0
    tls: TlsSettings | None = None  # TLS for callers
    forward_tls: ArchiveTls | None = None  # TLS towards the destination, its certificate checked
    extra: dict = field(default_factory=dict, repr=False)

    @property
    def caller_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(text, strict=False) for text in self.allow_addresses)

    @property
    def mutual_tls(self) -> bool:
        return self.tls is not None and self.tls.mutual

    def check(self) -> "ServeConfig":
        """The same config, or BadInputError naming the first bad key."""
        _checked_whole("port", self.port, PORT_RANGE)
        _checked_whole("workers", self.workers, WORKERS_RANGE)
        _checked_whole("max_spool_instances", self.max_spool_instances, SPOOL_INSTANCES_RANGE)
        _checked_whole("max_pixels", self.max_pixels, MAX_PIXELS_RANGE)
        _checked_real("retry_max_seconds", self.retry_max_seconds, RETRY_SECONDS_RANGE)
        checked_psnr_min(self.psnr_min, "serve config: psnr_min")
        if self.device not in DEVICE_CHOICES:
            raise BadInputError(f"serve config: device {self.device!r} is not one of {', '.join(DEVICE_CHOICES)}")
        for name, title in [("ae_title", self.ae_title), *[("allow", t) for t in self.allow]] + (
                [("forward.ae_title", self.forward.ae_title)] if self.forward else []) + (
                [("tls.clients", t) for t in self.tls.clients] if self.tls else []):
            _checked_ae_title(name, title)
        if self.forward is None:
            raise BadInputError("serve config: no destination: give forward (host, port, ae_title) or --forward "
                                "HOST:PORT:AET")
        _checked_whole("forward.port", self.forward.port, PORT_RANGE)
        if not isinstance(self.host, str) or not self.host.strip():
            raise BadInputError(f"serve config: host {self.host!r} is not an address to listen on")
        for text in self.allow_addresses:
            try:
                ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise BadInputError(f"serve config: allow_addresses {text!r} is not an IP address or network "
                                    "(e.g. 10.1.2.3 or 10.1.2.0/24)") from None
        try:
            self.message.format(**{name: "x" for name in MESSAGE_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise BadInputError(f"serve config: message template {self.message!r}: unknown field {error} "
                                f"(use {', '.join('{' + f + '}' for f in MESSAGE_FIELDS)})") from None
        if self.key_file is not None and not self.key_file.is_file():
            raise BadInputError(f"serve config: key_file {self.key_file} does not exist")
        if self.tls is not None:
            self._check_caller_tls()
        if self.forward_tls is not None:
            self._check_archive_tls()
        if listens_beyond_loopback(self.host) and not (self.allow_addresses or self.mutual_tls):
            raise BadInputError(f"serve config: host {self.host} listens beyond loopback, where an AE title proves "
                                "nothing: give allow_addresses or mutual TLS (tls.ca_certificates and tls.clients), "
                                "or listen on 127.0.0.1")
        if self.extra:
            raise BadInputError(f"serve config: unknown key(s) {', '.join(sorted(self.extra))}")
        return self

    def _check_caller_tls(self) -> None:
        tls = self.tls
        for name, path in (("tls.certificate", tls.certificate), ("tls.private_key", tls.private_key),
                           ("tls.ca_certificates", tls.ca_certificates)):
            if path is not None and not Path(path).is_file():
                raise BadInputError(f"serve config: {name} {path} does not exist")
        if tls.clients and tls.ca_certificates is None:
            raise BadInputError("serve config: tls.clients needs tls.ca_certificates (the CA that signed the "
                                "callers' certificates)")
        for title, fingerprint in tls.clients.items():
            if normalized_fingerprint(fingerprint) is None:
                raise BadInputError(f"serve config: tls.clients {title}: {fingerprint!r} is not a SHA-256 "
                                    "fingerprint (64 hex digits, colons allowed)")
        unbound = [title for title in self.allow if tls.ca_certificates is not None and tls.clients
                   and title not in tls.clients]
        if unbound:
            raise BadInputError(f"serve config: allow {unbound[0]} has no certificate in tls.clients (under mutual "
                                "TLS every calling AE title is bound to its certificate)")

    def _check_archive_tls(self) -> None:
        archive = self.forward_tls
        if archive.ca_certificates is None and archive.certificate_sha256 is None:
            raise BadInputError("serve config: forward_tls needs forward_tls.ca_certificates or "
                                "forward_tls.certificate_sha256: the archive's certificate is always checked")
        if archive.ca_certificates is not None and not Path(archive.ca_certificates).is_file():
            raise BadInputError(f"serve config: forward_tls.ca_certificates {archive.ca_certificates} does not exist")
        if archive.certificate_sha256 is not None and normalized_fingerprint(archive.certificate_sha256) is None:
            raise BadInputError(f"serve config: forward_tls.certificate_sha256 {archive.certificate_sha256!r} is not "
                                "a SHA-256 fingerprint (64 hex digits, colons allowed)")


def listens_beyond_loopback(host: str) -> bool:
    """Whether a listener on `host` can be reached from another machine. A host name other than
    localhost may resolve anywhere, so it counts as beyond."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return False
    try:
        return not ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return True


def normalized_fingerprint(text) -> str | None:
    """A SHA-256 fingerprint as 64 lowercase hex digits (openssl's AB:CD:... form accepted), or None."""
    if not isinstance(text, str):
        return None
    digits = text.strip().replace(":", "").lower()
    if len(digits) != 64 or any(c not in "0123456789abcdef" for c in digits):
        return None
    return digits


def _checked_ae_title(name: str, title) -> None:
    if not isinstance(title, str) or not title or len(title) > 16 or "\\" in title or not title.isprintable():
        raise BadInputError(f"serve config: {name} {title!r} is not a DICOM AE title (1-16 characters)")


def _checked_whole(name: str, value, bounds: tuple[int, int]) -> int:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadInputError(f"serve config: {name} {value!r} is not a whole number from {low} to {high}")
    return value


def _checked_real(name: str, value, bounds: tuple[float, float]) -> float:
    low, high = bounds
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadInputError(f"serve config: {name} {value!r} is not a number from {low:g} to {high:g}")
    return float(value)


def parse_destination(text: str) -> Destination:
    """HOST:PORT:AET."""
    parts = text.rsplit(":", 2)
    if len(parts) != 3 or not parts[1].isdigit():
        raise BadInputError(f"--forward {text!r}: expected HOST:PORT:AET")
    host, port, title = parts
    return Destination(host, int(port), title)


def load_config(path: Path | None, **overrides) -> ServeConfig:
    """The YAML file's settings (none: the defaults), then every override that is not None."""
    import yaml

    values: dict = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            raise BadInputError(f"--config {path}: cannot read it ({error.strerror or error})") from None
        except yaml.YAMLError as error:
            raise BadInputError(f"--config {path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BadInputError(f"--config {path}: expected a mapping of settings")
        values = dict(loaded or {})
    known = {f.name for f in fields(ServeConfig)} - {"extra"}
    config = ServeConfig(**_typed({k: v for k, v in values.items() if k in known}, path),
                         extra={k: v for k, v in values.items() if k not in known})
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


def _typed(values: dict, path) -> dict:
    """YAML values as the dataclass's types (paths, tuples, the destination, TLS). Numbers are
    only converted from text of digits; their ranges are check()'s to judge."""
    where = f"--config {path}" if path else "serve config"
    try:
        if "forward" in values:
            forward = values["forward"]
            values["forward"] = (parse_destination(forward) if isinstance(forward, str) else
                                 Destination(str(forward["host"]), _number(forward["port"]), str(forward["ae_title"])))
        if values.get("tls") is not None:
            tls = _mapping(values["tls"], "tls", where)
            unknown = set(tls) - {"certificate", "private_key", "ca_certificates", "clients"}
            if unknown:
                raise BadInputError(f"{where}: tls: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
            clients = _mapping(tls.get("clients") or {}, "tls.clients", where)
            values["tls"] = TlsSettings(Path(tls["certificate"]), Path(tls["private_key"]),
                                        Path(tls["ca_certificates"]) if tls.get("ca_certificates") else None,
                                        {str(title): str(fingerprint) for title, fingerprint in clients.items()})
        values["forward_tls"] = _archive_tls(values.get("forward_tls"), values.get("tls"), where)
        for name in ("spool", "key_file"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        for name in ("allow", "allow_addresses"):
            if name in values:
                listed = values[name] or ()
                values[name] = tuple(str(v) for v in ([listed] if isinstance(listed, str) else listed))
        for name in ("port", "workers", "max_spool_instances", "max_pixels", "psnr_min", "retry_max_seconds"):
            if name in values:
                values[name] = _number(values[name])
        for name in ("host", "device"):
            if name in values:
                values[name] = str(values[name])
    except (KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"{where}: bad value ({type(error).__name__}: {error})") from None
    return values


def _archive_tls(value, caller_tls, where: str) -> ArchiveTls | None:
    if value is None or value is False:
        return None
    if value is True:  # the older form: the archive's certificate checked against tls.ca_certificates
        return ArchiveTls(caller_tls.ca_certificates if isinstance(caller_tls, TlsSettings) else None)
    settings = _mapping(value, "forward_tls", where)
    unknown = set(settings) - {"ca_certificates", "certificate_sha256"}
    if unknown:
        raise BadInputError(f"{where}: forward_tls: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    return ArchiveTls(Path(settings["ca_certificates"]) if settings.get("ca_certificates") else None,
                      str(settings["certificate_sha256"]) if settings.get("certificate_sha256") else None)


def _mapping(value, name: str, where: str) -> dict:
    if not isinstance(value, dict):
        raise BadInputError(f"{where}: {name} must be a mapping, got {value!r}")
    return value


def _number(value):
    """Text of digits becomes the number it spells; anything else is left for check() to judge."""
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                return float(text)
            except ValueError:
                return value
    return value
