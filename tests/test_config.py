"""Configuration: every key typed from INI and environment, bad values named, reference INI."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from common.config import Config, ConfigError, load_config

# field name: (section, INI text, parsed value); [smtp] keys are spelled without "smtp_"
VALID = {
    "db_path": ("storage", "/srv/mail/queue.db", Path("/srv/mail/queue.db")),
    "synchronous": ("storage", "normal", "NORMAL"),
    "host": ("server", "0.0.0.0", "0.0.0.0"),
    "port": ("server", "8080", 8080),
    "api_token": ("server", " tok ", "tok"),
    "workers": ("server", "4", 4),
    "max_request_bytes": ("server", "1048576", 1048576),
    "metrics_public": ("server", "yes", True),
    "db_wait_seconds": ("server", "0.5", 0.5),
    "client_sync_url": ("client", "https://app.example/sync", "https://app.example/sync"),
    "client_sync_user": ("client", "syncuser", "syncuser"),
    "client_sync_password": ("client", "syncpass", "syncpass"),
    "client_sync_token": ("client", "bearer-tok", "bearer-tok"),
    "client_sync_signing_key": ("client", "hmac-key", "hmac-key"),
    "report_format": ("client", " Reports ", "reports"),
    "active": ("scheduler", "false", False),
    "send_interval_seconds": ("delivery", "0.25", 0.25),
    "test_mode": ("delivery", "true", True),
    "default_priority": ("delivery", "high", 1),
    "delivery_report_retention_seconds": ("delivery", "3600", 3600),
    "batch_size_per_account": ("delivery", "10", 10),
    "max_retries": ("delivery", "0", 0),
    "retry_delays": ("delivery", "1, 2,3", (1, 2, 3)),
    "dispatchers": ("delivery", "4", 4),
    "lease_seconds": ("delivery", "60", 60),
    "client_sync_idle_seconds": ("delivery", "0", 0),
    "report_batch_size": ("delivery", "100", 100),
    "message_id_domain": ("delivery", "Mail.Example.COM.", "mail.example.com"),
    "max_recipients_per_message": ("delivery", "50", 50),
    "attachment_timeout_seconds": ("attachments", "5", 5.0),
    "attachment_max_bytes": ("attachments", "1000", 1000),
    "allow_private_attachment_urls": ("attachments", "on", True),
    "s3_endpoint_url": ("attachments", "http://127.0.0.1:5000", "http://127.0.0.1:5000"),
    "s3_region": ("attachments", "eu-west-1", "eu-west-1"),
    "s3_access_key_id": ("attachments", "AKID", "AKID"),
    "s3_secret_access_key": ("attachments", "SECRET", "SECRET"),
    "s3_allowed_buckets": ("attachments", "mail, invoices,mail", ("invoices", "mail")),
    "smtp_host": ("smtp", "smtp.example.com", "smtp.example.com"),
    "smtp_port": ("smtp", "465", 465),
    "smtp_user": ("smtp", "mailer", "mailer"),
    "smtp_password": ("smtp", "pw", "pw"),
    "smtp_use_tls": ("smtp", "true", True),
    "smtp_starttls": ("smtp", "false", False),
    "suppression": ("delivery", "on", True),
    "imap_host": ("bounces", "imap.example.com", "imap.example.com"),
    "imap_port": ("bounces", "1143", 1143),
    "imap_user": ("bounces", "bounces@example.com", "bounces@example.com"),
    "imap_password": ("bounces", "enc:sealed", "enc:sealed"),
    "imap_security": ("bounces", " STARTTLS ", "starttls"),
    "imap_folder": ("bounces", "Bounces", "Bounces"),
    "imap_processed_folder": ("bounces", "Bounces.done", "Bounces.done"),
    "imap_unmatched_folder": ("bounces", "Bounces/other", "Bounces/other"),
    "imap_poll_seconds": ("bounces", "30", 30.0),
    "verp_domain": ("bounces", "Bounces.Example.com", "bounces.example.com"),
    "delivery_activity": ("logging", "1", True),
    "access_log": ("logging", "yes", True),
    "log_level": ("logging", "debug", "DEBUG"),
    "replica_url": ("replication", "s3://bucket/mail", "s3://bucket/mail"),
    "replica_access_key_id": ("replication", "AKIDREPLICA", "AKIDREPLICA"),
    "replica_secret_access_key": ("replication", "replica-secret", "replica-secret"),
    "replica_endpoint": ("replication", "http://minio.local:9000", "http://minio.local:9000"),
    "replica_region": ("replication", "eu-central-1", "eu-central-1"),
    "sync_interval": ("replication", "500ms", 0.5),
    "retention": ("replication", "7d", 604800.0),
}

# field name: values that must stop start-up
BAD = {
    "synchronous": ["fast"],
    "host": [" "],
    "port": ["0", "70000", "http", "80.5"],
    "workers": ["0", "two"],
    "max_request_bytes": ["-1", "25MB"],
    "metrics_public": ["maybe"],
    "db_wait_seconds": ["0", "-1", "21", "nan", "soon"],
    "client_sync_url": ["ftp://app.example/sync", "app.example"],
    "active": ["2"],
    "send_interval_seconds": ["0", "nan", "inf", "soon"],
    "test_mode": ["sometimes"],
    "default_priority": ["urgent", "7", "-1"],
    "delivery_report_retention_seconds": ["-1", "1w"],
    "batch_size_per_account": ["0"],
    "max_retries": ["-1", "many"],
    "retry_delays": ["", "60,soon", "-5"],
    "dispatchers": ["0"],
    "lease_seconds": ["0"],
    "client_sync_idle_seconds": ["-5"],
    "report_batch_size": ["0"],
    "report_format": ["json", "delivery-report"],
    "message_id_domain": ["localhost", "mail example.com", "-bad.example.com", "a..b.com"],
    "max_recipients_per_message": ["0", "lots"],
    "attachment_timeout_seconds": ["-1"],
    "attachment_max_bytes": ["0"],
    "allow_private_attachment_urls": ["perhaps"],
    "s3_endpoint_url": ["s3.local:9000"],
    "smtp_port": ["smtp", "0"],
    "smtp_use_tls": ["maybe"],
    "smtp_starttls": ["2"],
    "suppression": ["sometimes"],
    "imap_port": ["imap", "0"],
    "imap_security": ["ssl", "yes"],
    "imap_folder": [" ", 'a"b', "a\\b"],
    "imap_poll_seconds": ["0", "soon"],
    "verp_domain": ["localhost", "bounces example.com"],
    "delivery_activity": ["x"],
    "access_log": ["often"],
    "log_level": ["loud"],
    "replica_url": ["/srv/replica", "bucket/path"],
    "replica_endpoint": ["minio.local:9000"],
    "sync_interval": ["0", "-1s", "soon", "1w", "nan"],
    "retention": ["0d", "forever"],
}


def ini_name(field: str) -> str:
    return field.removeprefix("smtp_") if VALID[field][0] == "smtp" else field


def write_ini(path: Path, entries: dict[str, str]) -> Path:
    sections: dict[str, list[str]] = {}
    for field, text in entries.items():
        sections.setdefault(VALID[field][0], []).append(f"{ini_name(field)} = {text}")
    path.write_text("".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items()))
    return path


def empty_ini(directory: Path) -> Path:
    path = directory / "empty.ini"
    path.touch()
    return path


def sectioned_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(Config) if "section" in f.metadata}


def test_every_key_is_covered_by_these_tests():
    assert set(VALID) == sectioned_fields()


def test_defaults_of_an_empty_file(tmp_path):
    config = load_config(empty_ini(tmp_path), environ={"ASYNCMAIL_VAR_DIR": str(tmp_path)})
    assert config.port == 8000 and config.host == "127.0.0.1"
    assert config.synchronous == "FULL" and config.api_token is None
    assert config.max_request_bytes == 26214400 and config.retry_delays == (
        60,
        300,
        900,
        3600,
        7200,
    )
    assert config.database == tmp_path / "asyncmail.db"
    assert config.run_dir == tmp_path / "run"
    assert not config.has_default_account


def test_every_key_from_the_ini_file_is_typed(tmp_path):
    use_tls_only = {k: v[1] for k, v in VALID.items() if k != "smtp_starttls"}
    config = load_config(write_ini(tmp_path / "all.ini", use_tls_only), environ={})
    for field, (_, _, expected) in VALID.items():
        if field != "smtp_starttls":
            assert getattr(config, field) == expected, field
    assert config.has_default_account


# keys that are only valid together with others
COMPANIONS = {"imap_host": {"ASYNCMAIL_IMAP_USER": "u", "ASYNCMAIL_IMAP_PASSWORD": "p"}}


@pytest.mark.parametrize("field", sorted(VALID))
def test_every_key_from_the_environment_is_typed(tmp_path, field):
    section, text, expected = VALID[field]
    environ = {f"ASYNCMAIL_{field.upper()}": text, **COMPANIONS.get(field, {})}
    config = load_config(empty_ini(tmp_path), environ=environ)
    assert getattr(config, field) == expected


@pytest.mark.parametrize("missing", ["ASYNCMAIL_IMAP_USER", "ASYNCMAIL_IMAP_PASSWORD"])
def test_a_bounce_mailbox_needs_its_credentials(tmp_path, missing):
    environ = {"ASYNCMAIL_IMAP_HOST": "imap.example.com", **COMPANIONS["imap_host"]}
    del environ[missing]
    with pytest.raises(ConfigError, match=r"\[bounces\] imap_host is set"):
        load_config(empty_ini(tmp_path), environ=environ)


BAD_CASES = [(field, text) for field, texts in BAD.items() for text in texts]


@pytest.mark.parametrize("field, text", BAD_CASES)
def test_bad_ini_value_names_the_key(tmp_path, field, text):
    path = write_ini(tmp_path / "bad.ini", {field: text})
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    message = str(caught.value)
    assert f"[{VALID[field][0]}] {ini_name(field)}" in message
    assert "\n" not in message


@pytest.mark.parametrize("field, text", BAD_CASES)
def test_bad_environment_value_names_the_variable(tmp_path, field, text):
    with pytest.raises(ConfigError) as caught:
        load_config(empty_ini(tmp_path), environ={f"ASYNCMAIL_{field.upper()}": text})
    assert f"ASYNCMAIL_{field.upper()}" in str(caught.value)


def test_environment_overrides_ini_and_keywords_override_both(tmp_path):
    path = write_ini(tmp_path / "a.ini", {"port": "9000", "workers": "3"})
    config = load_config(path, environ={"ASYNCMAIL_PORT": "9100"}, workers=5)
    assert (config.port, config.workers) == (9100, 5)


def test_asyncmail_config_names_the_file(tmp_path):
    path = write_ini(tmp_path / "b.ini", {"port": "9200"})
    assert load_config(environ={"ASYNCMAIL_CONFIG": str(path)}).port == 9200
    with pytest.raises(ConfigError, match="ASYNCMAIL_CONFIG"):
        load_config(environ={"ASYNCMAIL_CONFIG": str(tmp_path / "missing.ini")})


def test_unparseable_file_is_a_config_error(tmp_path):
    path = tmp_path / "broken.ini"
    path.write_text("port = 8000\n")  # no section header
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(path, environ={})


def test_implicit_tls_and_starttls_together_are_refused(tmp_path):
    path = write_ini(
        tmp_path / "c.ini", {"smtp_host": "h", "smtp_use_tls": "1", "smtp_starttls": "1"}
    )
    with pytest.raises(ConfigError, match=r"\[smtp\]"):
        load_config(path, environ={})


# The reference service's config.ini layout (gnr-async-mail-service, October 2025): the same
# sections and keys, including sections this service does not use.
REFERENCE_INI = """\
[storage]
db_path = {db}
[server]
# host = 0.0.0.0
# port = 8000
# api_token = your-api-token
[client]
client_sync_url = http://127.0.0.1:8081/email/mailproxy/mp_endpoint/proxy_sync
client_sync_user = syncuser
client_sync_password = syncpass
# client_sync_token = mytoken

[scheduler]
active = true

[delivery]
send_interval_seconds = 0.5
test_mode = false
default_priority = 2
delivery_report_retention_seconds = 604800
batch_size_per_account = 50

[imap]
enabled = false
poll_interval_seconds = 60
s3_bucket =
s3_region = eu-west-1
s3_access_key =
s3_secret_key =
s3_endpoint_url =
s3_path_prefix = received/
attachment_inline_max_size = 524288
message_retention_seconds = 300
attachment_retention_seconds = 600

[bounce_detection]
enabled = false
retention_seconds = 604800

[logging]
delivery_activity = true
"""


def test_reference_config_ini_is_accepted_as_is(tmp_path):
    path = tmp_path / "config.ini"
    path.write_text(REFERENCE_INI.format(db=tmp_path / "mail_service.db"))
    config = load_config(path, environ={})
    assert config.database == tmp_path / "mail_service.db"
    assert config.client_sync_url.endswith("/proxy_sync")
    assert (config.client_sync_user, config.client_sync_password) == ("syncuser", "syncpass")
    assert config.active is True and config.test_mode is False
    assert config.send_interval_seconds == 0.5 and config.default_priority == 2
    assert config.batch_size_per_account == 50 and config.delivery_activity is True
    assert config.s3_region is None  # [imap] keys belong to the reference's IMAP feature


def test_db_path_expands_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(empty_ini(tmp_path), environ={"ASYNCMAIL_DB_PATH": "~/q.db"})
    assert config.database == tmp_path / "q.db"


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "[delivery]\nmax_retry = 3\n",
            "unknown key [delivery] max_retry; did you mean max_retries?",
        ),
        ("[server]\napi_tokn = t\n", "unknown key [server] api_tokn; did you mean api_token?"),
        ("[delivry]\nmax_retries = 3\n", "unknown section [delivry]; did you mean [delivery]?"),
        ("[server]\nfrobnicate = 1\n", "unknown key [server] frobnicate"),
        ("[mystery]\nx = 1\n", "unknown section [mystery]"),
        ("[DEFAULT]\nport = 1\n", "unknown key [DEFAULT] port"),
    ],
)
def test_unknown_keys_and_sections_are_refused_with_the_closest_name(tmp_path, text, message):
    path = tmp_path / "typo.ini"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unknown_key_without_a_close_name_offers_no_guess(tmp_path):
    path = tmp_path / "typo.ini"
    path.write_text("[server]\nfrobnicate = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert "did you mean" not in str(caught.value)
