"""The configuration of `wm serve`: a YAML file, overridden by the command line's flags.

Every key is checked before the node starts (`wm serve --check` does only that): a bad value is
one line naming the key. The key that marks is never in the file: `key_file` names a file, or
the WM_KEY variable holds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..errors import BadInputError
from ..quality import checked_psnr_min

#: Message templates: never patient data. {instance}: a keyed hash (HMAC-SHA256 under the marking
#: key, 12 hex digits) of the SOP Instance UID, the default: one ID per instance, meaningless
#: without the key, and the same again if the instance is marked again after a crash; {study}:
#: the same of the Study Instance UID (one ID per study); {random}: 12 random hex digits. The
#: audit log links each to its instance.
MESSAGE_FIELDS = ("instance", "study", "random")


@dataclass(frozen=True)
class Destination:
    host: str
    port: int
    ae_title: str


@dataclass(frozen=True)
class TlsSettings:
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None  # when given, callers must present a certificate it signed


@dataclass(frozen=True)
class ServeConfig:
    port: int = 11112
    ae_title: str = "WM"
    host: str = "0.0.0.0"
    allow: tuple[str, ...] = ()  # calling AE titles; none: only loopback callers are accepted
    allow_addresses: tuple[str, ...] = ()  # with `allow`, also the callers' IP addresses
    forward: Destination | None = None
    spool: Path = Path("wm-spool")
    model: str | None = None
    key_file: Path | None = None
    workers: int = 2
    message: str = "wm-{instance}"
    psnr_min: float = 40.0
    max_spool_instances: int = 1000
    forward_unmarkable: bool = False  # forward what cannot be marked, unmarked (audited either way)
    retry_max_seconds: float = 60.0
    tls: TlsSettings | None = None  # TLS for callers (and, with forward_tls, towards the destination)
    forward_tls: bool = False
    extra: dict = field(default_factory=dict, repr=False)

    def check(self) -> "ServeConfig":
        """The same config, or BadInputError naming the first bad key."""
        if not 0 < self.port < 65536:
            raise BadInputError(f"serve config: port {self.port} is not a TCP port (1-65535)")
        for name, title in [("ae_title", self.ae_title), *[("allow", t) for t in self.allow]] + (
                [("forward.ae_title", self.forward.ae_title)] if self.forward else []):
            if not title or len(title) > 16 or "\\" in title or not title.isprintable():
                raise BadInputError(f"serve config: {name} {title!r} is not a DICOM AE title (1-16 characters)")
        if self.forward is None:
            raise BadInputError("serve config: no destination: give forward (host, port, ae_title) or --forward "
                                "HOST:PORT:AET")
        if not 0 < self.forward.port < 65536:
            raise BadInputError(f"serve config: forward.port {self.forward.port} is not a TCP port")
        checked_psnr_min(self.psnr_min, "serve config: psnr_min")
        if self.workers < 1 or self.max_spool_instances < 1:
            raise BadInputError("serve config: workers and max_spool_instances must be at least 1")
        if self.allow_addresses and not self.allow:
            raise BadInputError("serve config: allow_addresses needs allow (the calling AE titles)")
        try:
            self.message.format(**{name: "x" for name in MESSAGE_FIELDS})
        except (KeyError, IndexError, ValueError) as error:
            raise BadInputError(f"serve config: message template {self.message!r}: unknown field {error} "
                                f"(use {', '.join('{' + f + '}' for f in MESSAGE_FIELDS)})") from None
        if self.key_file is not None and not self.key_file.is_file():
            raise BadInputError(f"serve config: key_file {self.key_file} does not exist")
        if self.tls is not None:
            for name, path in (("tls.certificate", self.tls.certificate), ("tls.private_key", self.tls.private_key),
                               ("tls.ca_certificates", self.tls.ca_certificates)):
                if path is not None and not Path(path).is_file():
                    raise BadInputError(f"serve config: {name} {path} does not exist")
        if self.forward_tls and self.tls is None:
            raise BadInputError("serve config: forward_tls needs tls (this node's certificate and key)")
        if self.extra:
            raise BadInputError(f"serve config: unknown key(s) {', '.join(sorted(self.extra))}")
        return self


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
    """YAML values as the dataclass's types (paths, tuples, the destination, TLS)."""
    where = f"--config {path}" if path else "serve config"
    try:
        if "forward" in values:
            forward = values["forward"]
            values["forward"] = (parse_destination(forward) if isinstance(forward, str) else
                                 Destination(str(forward["host"]), int(forward["port"]), str(forward["ae_title"])))
        if "tls" in values and values["tls"] is not None:
            tls = values["tls"]
            values["tls"] = TlsSettings(Path(tls["certificate"]), Path(tls["private_key"]),
                                        Path(tls["ca_certificates"]) if tls.get("ca_certificates") else None)
        for name in ("spool", "key_file"):
            if values.get(name) is not None:
                values[name] = Path(values[name])
        for name in ("allow", "allow_addresses"):
            if name in values:
                values[name] = tuple(str(v) for v in (values[name] or ()))
        for name, kind in (("port", int), ("workers", int), ("max_spool_instances", int), ("psnr_min", float),
                           ("retry_max_seconds", float)):
            if name in values:
                try:
                    values[name] = kind(values[name])
                except (TypeError, ValueError):
                    raise BadInputError(f"{where}: {name} {values[name]!r} is not a number") from None
    except (KeyError, TypeError, ValueError) as error:
        raise BadInputError(f"{where}: bad value ({type(error).__name__}: {error})") from None
    return values
