"""One typed configuration object, built from the INI file and ASYNCMAIL_* variables.

Every key of the reference ``config.ini`` keeps its name and meaning.  Keys are unique across
sections, so ``ASYNCMAIL_<KEY>`` overrides a key wherever it lives.  A bad value raises
``ConfigError`` with one line naming the key; entry points print it and exit.
"""

from __future__ import annotations

import configparser
import dataclasses
import difflib
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from common.addresses import no_line_breaks
from common.enums import Priority

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "etc" / "asyncmail.ini"
MAX_DB_WAIT = 20.0  # seconds: below gunicorn's worker timeout (30 s), which kills a stuck worker


class ConfigError(ValueError):
    """A configuration value is missing or wrong; the message names the key."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _optional(text: str) -> str | None:
    return text.strip() or None


def _text(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError("expected a whole number") from None


def _float(text: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError("expected a number") from None
    if not math.isfinite(value):
        raise ValueError("expected a finite number")
    return value


def _port(text: str) -> int:
    value = _int(text)
    if not 1 <= value <= 65535:
        raise ValueError("expected a TCP port between 1 and 65535")
    return value


def _delays(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        values = ()
    if not values or any(v < 0 for v in values):
        raise ValueError("expected a comma-separated list of non-negative seconds")
    return values


def _names(text: str) -> tuple[str, ...]:
    return tuple(sorted({part.strip() for part in text.split(",") if part.strip()}))


def _priority(text: str) -> int:
    try:
        return int(Priority.parse(text))
    except ValueError:
        raise ValueError("expected 0-3 or immediate/high/medium/low") from None


def _synchronous(text: str) -> str:
    value = text.strip().upper()
    if value not in {"OFF", "NORMAL", "FULL", "EXTRA"}:
        raise ValueError("expected OFF, NORMAL, FULL or EXTRA")
    return value


def _log_level(text: str) -> str:
    value = text.strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


REPORT_FORMATS = ("delivery_report", "reports")  # the key the report items travel under


def _report_format(text: str) -> str:
    value = text.strip().lower()
    if value not in REPORT_FORMATS:
        raise ValueError("expected delivery_report or reports")
    return value


# a fully qualified domain: dot-separated labels of letters, digits and inner hyphens
DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{2,63}$")


def _domain(text: str) -> str | None:
    value = _optional(text)
    if value is None:
        return None
    value = value.lower().rstrip(".")
    if not DOMAIN.match(value):
        raise ValueError("expected a fully qualified domain name such as mail.example.com")
    return value


IMAP_SECURITY = ("tls", "starttls", "none")  # implicit TLS (993), STARTTLS (143), cleartext


def _imap_security(text: str) -> str:
    value = text.strip().lower()
    if value not in IMAP_SECURITY:
        raise ValueError("expected tls, starttls or none")
    return value


def _folder(text: str) -> str:
    value = no_line_breaks(_text(text))
    if '"' in value or "\\" in value:
        raise ValueError("an IMAP folder name without quotes or backslashes")
    return value


def _url(text: str) -> str | None:
    value = _optional(text)
    if value is not None and not value.lower().startswith(("http://", "https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


def _replica_url(text: str) -> str | None:
    value = _optional(text)
    if value is not None and not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", value):
        raise ValueError("expected a URL Litestream accepts: s3://bucket/path, file:///path, ...")
    return value


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    """Seconds, written as a number (seconds) or with a unit: 500ms, 1s, 15m, 24h, 7d."""
    value = text.strip().lower()
    scale = 1.0
    if value.endswith("ms"):
        value, scale = value[:-2], 0.001
    elif value[-1:] in DURATION_UNITS:
        value, scale = value[:-1], DURATION_UNITS[value[-1]]
    try:
        seconds = _float(value) * scale
    except ValueError:
        raise ValueError("expected seconds, or a number with ms, s, m, h or d") from None
    if seconds <= 0:
        raise ValueError("must be greater than zero")
    return seconds


def _nonneg(kind):
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise ValueError("must not be negative")
        return value

    return parse


def _positive(kind):
    def parse(text: str):
        value = kind(text)
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    return parse


def _db_wait(text: str) -> float:
    value = _float(text)
    if not 0 < value <= MAX_DB_WAIT:
        raise ValueError(f"expected seconds above 0 and at most {MAX_DB_WAIT}")
    return value


def _key(section: str, parser=str, **kwargs):
    """A dataclass field that knows its INI section and how to parse its text."""
    return field(metadata={"section": section, "parse": parser}, **kwargs)


@dataclass(frozen=True)
class Config:
    """Every setting of the service, typed; see SPEC §3 for the meaning of each key."""

    var_dir: Path = Path("var")
    config_path: Path | None = None
    secret_key: str | None = field(default=None, repr=False)

    # [storage]
    db_path: Path | None = _key("storage", Path, default=None)
    synchronous: str = _key("storage", _synchronous, default="FULL")
    # [server]
    host: str = _key("server", _text, default="127.0.0.1")
    port: int = _key("server", _port, default=8000)
    api_token: str | None = _key("server", _optional, default=None, repr=False)
    workers: int = _key("server", _positive(_int), default=2)
    max_request_bytes: int = _key("server", _positive(_int), default=25 * 1024 * 1024)
    metrics_public: bool = _key("server", _bool, default=False)
    # an API request waits this long for a locked database, then answers 503 + Retry-After
    # (the dispatchers and the reporter wait store.db.BUSY_TIMEOUT_MS: they have no client)
    db_wait_seconds: float = _key("server", _db_wait, default=3.0)
    # [client]
    client_sync_url: str | None = _key("client", _url, default=None)
    client_sync_user: str | None = _key("client", _optional, default=None)
    client_sync_password: str | None = _key("client", _optional, default=None, repr=False)
    client_sync_token: str | None = _key("client", _optional, default=None, repr=False)
    client_sync_signing_key: str | None = _key("client", _optional, default=None, repr=False)
    report_format: str = _key("client", _report_format, default="delivery_report")
    # [scheduler]
    active: bool = _key("scheduler", _bool, default=True)
    # [delivery]
    send_interval_seconds: float = _key("delivery", _positive(_float), default=0.5)
    test_mode: bool = _key("delivery", _bool, default=False)
    default_priority: int = _key("delivery", _priority, default=2)
    delivery_report_retention_seconds: int = _key("delivery", _nonneg(_int), default=604800)
    batch_size_per_account: int = _key("delivery", _positive(_int), default=50)
    max_retries: int = _key("delivery", _nonneg(_int), default=5)
    retry_delays: tuple[int, ...] = _key("delivery", _delays, default=(60, 300, 900, 3600, 7200))
    dispatchers: int = _key("delivery", _positive(_int), default=2)
    lease_seconds: int = _key("delivery", _positive(_int), default=120)
    client_sync_idle_seconds: int = _key("delivery", _nonneg(_int), default=300)
    report_batch_size: int = _key("delivery", _positive(_int), default=500)
    message_id_domain: str | None = _key("delivery", _domain, default=None)
    suppression: bool = _key("delivery", _bool, default=False)  # skip suppressed recipients
    max_recipients_per_message: int = _key("delivery", _positive(_int), default=1000)
    # [attachments]
    attachment_timeout_seconds: float = _key("attachments", _positive(_float), default=30.0)
    attachment_max_bytes: int = _key("attachments", _positive(_int), default=25 * 1024 * 1024)
    allow_private_attachment_urls: bool = _key("attachments", _bool, default=False)
    s3_endpoint_url: str | None = _key("attachments", _url, default=None)
    s3_region: str | None = _key("attachments", _optional, default=None)
    s3_access_key_id: str | None = _key("attachments", _optional, default=None)
    s3_secret_access_key: str | None = _key("attachments", _optional, default=None, repr=False)
    s3_allowed_buckets: tuple[str, ...] = _key("attachments", _names, default=())
    # [smtp] the implicit "default" account
    smtp_host: str | None = _key("smtp", _optional, default=None)
    smtp_port: int | None = _key("smtp", _port, default=None)
    smtp_user: str | None = _key("smtp", _optional, default=None)
    smtp_password: str | None = _key("smtp", _optional, default=None, repr=False)
    smtp_use_tls: bool | None = _key("smtp", _bool, default=None)
    smtp_starttls: bool = _key("smtp", _bool, default=False)
    # [bounces] the mailbox DSNs arrive in (docs/bounces.md); no imap_host: no bouncer
    imap_host: str | None = _key("bounces", _optional, default=None)
    imap_port: int | None = _key("bounces", _port, default=None)  # 993 with tls, else 143
    imap_user: str | None = _key("bounces", _optional, default=None)
    imap_password: str | None = _key("bounces", _optional, default=None, repr=False)
    imap_security: str = _key("bounces", _imap_security, default="tls")
    imap_folder: str = _key("bounces", _folder, default="INBOX")
    imap_processed_folder: str = _key("bounces", _folder, default="processed")
    imap_unmatched_folder: str = _key("bounces", _folder, default="unmatched")
    imap_poll_seconds: float = _key("bounces", _positive(_float), default=60.0)
    verp_domain: str | None = _key("bounces", _domain, default=None)
    # [logging]
    delivery_activity: bool = _key("logging", _bool, default=False)
    access_log: bool = _key("logging", _bool, default=False)  # one line per API request
    log_level: str = _key("logging", _log_level, default="INFO")
    # [replication] continuous replication of the database with Litestream (docs/scaling.md)
    replica_url: str | None = _key("replication", _replica_url, default=None)
    replica_access_key_id: str | None = _key("replication", _optional, default=None)
    replica_secret_access_key: str | None = _key("replication", _optional, default=None, repr=False)
    replica_endpoint: str | None = _key("replication", _url, default=None)  # MinIO, R2, ...
    replica_region: str | None = _key("replication", _optional, default=None)
    sync_interval: float = _key("replication", _duration, default=1.0)
    retention: float = _key("replication", _duration, default=86400.0)

    # -- derived paths -------------------------------------------------------------------
    @property
    def database(self) -> Path:
        return self.db_path or self.var_dir / "asyncmail.db"

    @property
    def run_dir(self) -> Path:
        return self.var_dir / "run"

    @property
    def ratelimit_dir(self) -> Path:
        return self.var_dir / "ratelimit"

    @property
    def metrics_dir(self) -> Path:
        return self.var_dir / "metrics"

    @property
    def log_dir(self) -> Path:
        return self.var_dir / "log"

    @property
    def has_default_account(self) -> bool:
        return self.smtp_host is not None

    @property
    def replication_enabled(self) -> bool:
        """The database is replicated by Litestream (a replica_url is set)."""
        return self.replica_url is not None

    @property
    def bounces_enabled(self) -> bool:
        """A bounce mailbox is configured: the bouncer program runs."""
        return self.imap_host is not None

    @property
    def reports_enabled(self) -> bool:
        """Delivery reports are posted (a client_sync_url is set)."""
        return self.client_sync_url is not None

    def s3_refusal(self, bucket: str) -> str | None:
        """Why an attachment from this S3 bucket is refused, or None.

        S3 needs explicit keys and an allow-list: without them a client could have any
        object the host's own cloud credentials can read mailed to it.
        """
        if not (self.s3_access_key_id and self.s3_secret_access_key and self.s3_allowed_buckets):
            return (
                "S3 attachments are not enabled here (the service needs s3_access_key_id, "
                "s3_secret_access_key and s3_allowed_buckets configured)"
            )
        if bucket not in self.s3_allowed_buckets:
            return f"bucket {bucket!r} is not in s3_allowed_buckets"
        return None


# The [smtp] section's keys are spelled plainly in the INI file (host, port, ...) but would
# clash with [server] host/port; inside [smtp] they map to smtp_*, and the environment uses
# ASYNCMAIL_SMTP_HOST and so on.
SMTP_KEYS = {"host", "port", "user", "password", "use_tls", "starttls"}


def _fields_by_ini_name() -> dict[tuple[str, str], dataclasses.Field]:
    table = {}
    for f in dataclasses.fields(Config):
        section = f.metadata.get("section")
        if section is None:
            continue
        name = f.name.removeprefix("smtp_") if section == "smtp" else f.name
        table[(section, name)] = f
    return table


# Keys of the reference service's config.ini (gnr-async-mail-service) that belong to features
# this service does not have (its IMAP receiving and bounce detection): accepted so its
# config.ini starts this service unchanged, and ignored.
REFERENCE_UNUSED = {
    "imap": {
        "enabled",
        "poll_interval_seconds",
        "s3_bucket",
        "s3_region",
        "s3_access_key",
        "s3_secret_key",
        "s3_endpoint_url",
        "s3_path_prefix",
        "attachment_inline_max_size",
        "message_retention_seconds",
        "attachment_retention_seconds",
    },
    "bounce_detection": {"enabled", "retention_seconds"},
}


def _known_keys() -> dict[str, set[str]]:
    """Every accepted key, by section."""
    known: dict[str, set[str]] = {s: set(keys) for s, keys in REFERENCE_UNUSED.items()}
    for section, name in _fields_by_ini_name():
        known.setdefault(section, set()).add(name)
    return known


def _closest(word: str, choices) -> str | None:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return close[0] if close else None


def _refuse_unknown(parser: configparser.ConfigParser) -> None:
    """A key or section the service does not know is a typo until proven otherwise."""
    known = _known_keys()
    for name in parser.defaults():
        raise ConfigError(f"unknown key [DEFAULT] {name}; put it in the section it belongs to")
    for section in parser.sections():
        if section not in known:
            close = _closest(section, known)
            hint = f"; did you mean [{close}]?" if close else ""
            raise ConfigError(f"unknown section [{section}]{hint}")
        for name in parser.options(section):
            if name not in known[section]:
                close = _closest(name, known[section])
                hint = f"; did you mean {close}?" if close else ""
                raise ConfigError(f"unknown key [{section}] {name}{hint}")


def _parse(f: dataclasses.Field, text: str, origin: str):
    try:
        return f.metadata["parse"](text)
    except (ValueError, KeyError) as exc:
        reason = exc.args[0] if exc.args and isinstance(exc.args[0], str) else "invalid value"
        raise ConfigError(f"{origin}: {text!r} is not valid ({reason})") from None


def load_config(path: str | os.PathLike | None = None, environ=None, **overrides) -> Config:
    """Build the Config from the INI file, then ASYNCMAIL_* variables, then keyword overrides."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("ASYNCMAIL_CONFIG") or DEFAULT_CONFIG)
    parser = configparser.ConfigParser(interpolation=None)
    if path.exists():
        try:
            parser.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigError(f"{path}: cannot parse ({exc.message.splitlines()[0]})") from None
    elif "ASYNCMAIL_CONFIG" in environ or path != DEFAULT_CONFIG:
        raise ConfigError(f"ASYNCMAIL_CONFIG: file {path} does not exist")
    _refuse_unknown(parser)

    values: dict[str, object] = {}
    for (section, name), f in _fields_by_ini_name().items():
        if parser.has_option(section, name):
            values[f.name] = _parse(f, parser.get(section, name), f"[{section}] {name}")
        env_name = "ASYNCMAIL_" + f.name.upper()
        if env_name in environ:
            values[f.name] = _parse(f, environ[env_name], env_name)

    var_dir = Path(environ.get("ASYNCMAIL_VAR_DIR") or "var").resolve()
    values.setdefault("db_path", None)
    if values["db_path"] is not None:
        values["db_path"] = Path(os.path.expanduser(str(values["db_path"])))
    values.update(overrides)
    values.setdefault("var_dir", var_dir)
    values.setdefault("config_path", path if path.exists() else None)
    values.setdefault("secret_key", environ.get("ASYNCMAIL_SECRET_KEY") or None)
    if values.get("smtp_use_tls") and values.get("smtp_starttls"):
        raise ConfigError("[smtp] use_tls and starttls: choose one (implicit TLS or STARTTLS)")
    if values.get("imap_host") and not (values.get("imap_user") and values.get("imap_password")):
        raise ConfigError("[bounces] imap_host is set: imap_user and imap_password are needed too")
    return Config(**values)
