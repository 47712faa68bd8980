"""The ``asyncmail`` console script: operator chores without the web process.

Exit codes: 0 done, 1 not found / rejected / refused (``status``: unhealthy), 2 bad usage or
configuration, 3 the database or supervisord cannot be reached, 141 the reader of the output
went away (``asyncmail status | head``).  ``--json`` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import os
import sys

import apsw

from cli import accounts, backup, messages, service, stack, suppressions, tenants
from cli.output import BROKEN_PIPE, UNAVAILABLE, USAGE, CliError
from common.config import ConfigError, load_config
from common.enums import Status

PRIORITIES = "0-3 or immediate/high/medium/low"


CONFIG_HELP = "INI file (default: $ASYNCMAIL_CONFIG or etc/asyncmail.ini)"
JSON_HELP = "print JSON for scripts instead of tables"
IN_TENANT = "the tenant to act in (default: the default tenant)"
ON_TENANT = "only this tenant (default: the whole service)"


def _common_options(with_json: bool = True) -> argparse.ArgumentParser:
    """--config and --json, accepted before or after the subcommand."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--config", default=argparse.SUPPRESS, metavar="FILE", help=CONFIG_HELP)
    if with_json:
        parent.add_argument(
            "--json", action="store_true", default=argparse.SUPPRESS, help=JSON_HELP
        )
    return parent


def _command(sub, name: str, func, common, tenant: str | None = None, **kwargs):
    """A subcommand; ``tenant``: the help of its --tenant option (None: it has none)."""
    parser = sub.add_parser(
        name,
        help=func.__doc__,
        description=func.__doc__,
        parents=[common],
        allow_abbrev=False,
        **kwargs,
    )
    if tenant is not None:
        parser.add_argument("--tenant", metavar="ID", help=tenant)
    parser.set_defaults(func=func)
    return parser


def _accounts(sub, common) -> None:
    group = sub.add_parser("accounts", help="manage SMTP accounts").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    add = _command(group, "add", accounts.cmd_accounts_add, common, IN_TENANT)
    add.add_argument("id", help="account id messages refer to as account_id")
    add.add_argument("--host", required=True)
    add.add_argument("--port", type=int, required=True)
    add.add_argument("--user")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-prompt",
        action="store_true",
        help="ask for the password (also the default with --user on a terminal)",
    )
    secret.add_argument(
        "--password-env", metavar="VAR", help="read the password from environment variable VAR"
    )
    add.add_argument(
        "--use-tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="implicit TLS (default: when the port is 465)",
    )
    add.add_argument("--starttls", action="store_true", default=None)
    add.add_argument("--ttl", type=int, help="seconds a connection is reused (300)")
    add.add_argument("--timeout", type=float, help="seconds per SMTP command (30)")
    for unit in ("second", "minute", "hour", "day"):
        add.add_argument(f"--limit-per-{unit}", type=int, metavar="N")
    add.add_argument("--limit-behavior", choices=["defer", "reject"])
    add.add_argument("--batch-size", type=int, help="most messages per claim for this account")
    add.add_argument("--max-recipients-per-transaction", type=int, metavar="N",
                     help="RCPTs per SMTP transaction (100)")  # fmt: skip
    _command(group, "list", accounts.cmd_accounts_list, common, IN_TENANT)
    _command(group, "show", accounts.cmd_accounts_show, common, IN_TENANT).add_argument("id")
    delete = _command(group, "delete", accounts.cmd_accounts_delete, common, IN_TENANT)
    delete.add_argument("id")
    delete.add_argument("--purge", action="store_true", help="also delete its unsent messages")
    usage = _command(group, "usage", accounts.cmd_accounts_usage, common, IN_TENANT)
    usage.add_argument("id", nargs="?", help="one account (default: every account)")


def _tenants(sub, common) -> None:
    group = sub.add_parser(
        "tenants", help="applications sharing the service (docs/tenants.md)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    add = _command(group, "add", tenants.cmd_tenants_add, common)
    add.add_argument("id", help="a slug: lower-case letters, digits and '-'")
    add.add_argument("--name", help="default: the id")
    add.add_argument("--report-url", metavar="URL", help="where its delivery reports go")
    add.add_argument("--report-user", metavar="USER", help="basic auth user for it")
    for flag, what in (
        ("--report-password-env", "its basic auth password"),
        ("--report-token-env", "its bearer token"),
        ("--signing-key-env", "the key that signs its reports"),
    ):
        add.add_argument(flag, metavar="VAR", help=f"read {what} from environment variable VAR")
    add.add_argument("--report-format", choices=["delivery_report", "reports"])
    for unit in ("minute", "hour", "day"):
        add.add_argument(f"--limit-per-{unit}", type=int, metavar="N",
                         help=f"most sends per {unit}, all its accounts together")  # fmt: skip
    add.add_argument("--limit-behavior", choices=["defer", "reject"])
    _command(group, "list", tenants.cmd_tenants_list, common)
    for name, func in (
        ("show", tenants.cmd_tenants_show),
        ("rotate-token", tenants.cmd_tenants_rotate_token),
        ("suspend", tenants.cmd_tenants_suspend),
        ("activate", tenants.cmd_tenants_activate),
    ):
        _command(group, name, func, common).add_argument("id")
    delete = _command(group, "delete", tenants.cmd_tenants_delete, common)
    delete.add_argument("id")
    delete.add_argument(
        "--purge", action="store_true", help="also while it has unsent mail or unreported outcomes"
    )


def _send(sub, common) -> None:
    # send's --json names the input file; its output switch is --output-json
    send = _command(
        sub,
        "send",
        messages.cmd_send,
        _common_options(with_json=False),
        IN_TENANT,
        epilog="Exit 1 when any message was rejected; the reasons are printed.",
    )
    source = send.add_mutually_exclusive_group()
    source.add_argument(
        "--json",
        dest="json_file",
        metavar="FILE",
        help="a message, a list, or an add-messages body ('-': stdin)",
    )
    source.add_argument("--eml", metavar="FILE", help="an RFC 5322 message file ('-': stdin)")
    send.add_argument(
        "--output-json",
        dest="json",
        action="store_true",
        default=argparse.SUPPRESS,
        help=JSON_HELP + " (--json names the input)",
    )
    send.add_argument("--id", help="the client's message id (with --eml: its Message-ID)")
    send.add_argument("--from", dest="sender", metavar="ADDRESS")
    send.add_argument("--from-name")
    for name in ("to", "cc", "bcc", "reply-to"):
        send.add_argument(
            f"--{name}", action="append", metavar="ADDRESS", help="repeat or separate with commas"
        )
    send.add_argument("--return-path", metavar="ADDRESS", help="envelope sender")
    send.add_argument("--subject")
    text = send.add_mutually_exclusive_group()
    text.add_argument("--body")
    text.add_argument("--body-file", metavar="FILE", help="the body from a file ('-': stdin)")
    send.add_argument("--html", action="store_true", help="the body is HTML")
    send.add_argument("--header", action="append", metavar="'NAME: VALUE'")
    send.add_argument("--attach", action="append", metavar="FILE")
    send.add_argument("--message-id")
    send.add_argument("--account", help="account id (default: the [smtp] account)")
    send.add_argument("--priority", help=PRIORITIES)
    send.add_argument("--deferred-ts", type=int, metavar="EPOCH", help="do not send before")


def _messages(sub, common) -> None:
    group = sub.add_parser("messages", help="inspect and delete messages").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    listing = _command(group, "list", messages.cmd_messages_list, common, IN_TENANT)
    listing.add_argument("--status", choices=[s.value for s in Status])
    listing.add_argument("--account")
    listing.add_argument("--active-only", action="store_true", help="only unsent messages")
    listing.add_argument("--limit", type=int, default=50, help="1-1000 (50)")
    listing.add_argument("--cursor", type=int, default=0, help="from a previous page")
    _command(group, "show", messages.cmd_messages_show, common, IN_TENANT).add_argument("id")
    delete = _command(group, "delete", messages.cmd_messages_delete, common, IN_TENANT)
    delete.add_argument("ids", nargs="+")


def _suppressions(sub, common) -> None:
    group = sub.add_parser(
        "suppressions", help="addresses not sent to (docs/bounces.md)"
    ).add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = _command(group, "list", suppressions.cmd_suppressions_list, common, IN_TENANT)
    listing.add_argument("--limit", type=int, default=100, help="1-1000 (100)")
    listing.add_argument("--cursor", help="from a previous page")
    add = _command(group, "add", suppressions.cmd_suppressions_add, common, IN_TENANT)
    add.add_argument("address")
    add.add_argument("--reason", choices=["manual", "complaint", "hard_bounce"], default="manual")
    remove = _command(group, "remove", suppressions.cmd_suppressions_remove, common, IN_TENANT)
    remove.add_argument("address")


def _stack(sub, common) -> None:
    launch = _command(sub, "supervisord", stack.cmd_supervisord, common)
    launch.add_argument(
        "-n",
        "--foreground",
        action="store_true",
        help="stay in the foreground (make run); default: daemonise",
    )
    ctl = _command(
        sub, "ctl", stack.cmd_ctl, common, epilog="Example: asyncmail ctl stop 'dispatcher:*'"
    )
    ctl.add_argument("ctl_args", nargs=argparse.REMAINDER, help="supervisorctl arguments")
    _command(sub, "reload", stack.cmd_reload, common)
    stop = _command(sub, "shutdown", stack.cmd_shutdown, common)
    stop.add_argument(
        "--timeout",
        type=float,
        default=stack.SHUTDOWN_TIMEOUT,
        help="seconds to wait for every process to exit",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command tree."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog="asyncmail",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # an option is spelled out, never guessed from a prefix
    )
    parser.add_argument("--config", metavar="FILE", help=CONFIG_HELP)
    parser.add_argument("--json", action="store_true", help=JSON_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "init", service.cmd_init, common)
    _command(sub, "check-config", service.cmd_check_config, common)
    _command(sub, "token", service.cmd_token, common)
    seal = _command(sub, "seal-password", service.cmd_seal_password, common)
    seal.add_argument("--password-env", metavar="VAR", help="read it from environment variable VAR")
    _tenants(sub, common)
    _accounts(sub, common)
    _suppressions(sub, common)
    _send(sub, common)
    _messages(sub, common)
    _command(
        sub,
        "status",
        service.cmd_status,
        common,
        ON_TENANT,
        epilog="The health check: exit 0 healthy, 1 a process is stale or missing, "
        "3 the database cannot be read.",
    )
    run_now = _command(sub, "run-now", service.cmd_run_now, common, ON_TENANT)
    run_now.add_argument(
        "--flush",
        action="store_true",
        help="first make messages waiting for a retry ready now (a server back from an outage)",
    )
    _retry(sub, common)
    _command(sub, "suspend", service.cmd_suspend, common, ON_TENANT)
    _command(sub, "activate", service.cmd_activate, common, ON_TENANT)
    cleanup = _command(sub, "cleanup", service.cmd_cleanup, common, ON_TENANT)
    cleanup.add_argument(
        "--older-than",
        type=int,
        metavar="SECONDS",
        help="default: delivery_report_retention_seconds",
    )
    _command(sub, "backup", backup.cmd_backup, common).add_argument(
        "file", help="a new file (never overwritten)"
    )
    _restore(sub, common)
    _stack(sub, common)
    return parser


def _restore(sub, common) -> None:
    restore = _command(
        sub,
        "restore",
        backup.cmd_restore,
        common,
        epilog="Refused while the stack runs; the previous database is kept aside.",
    )
    restore.add_argument("file", nargs="?", help="a backup (asyncmail backup FILE)")
    restore.add_argument(
        "--from-replica",
        action="store_true",
        help="restore the Litestream replica of [replication] replica_url instead",
    )
    restore.add_argument(
        "--timestamp",
        metavar="T",
        help="with --from-replica: the database as it was at T (2026-01-31T12:00:00Z)",
    )


def _retry(sub, common) -> None:
    retry = _command(
        sub,
        "retry",
        service.cmd_retry,
        common,
        IN_TENANT,
        epilog="Messages deferred by their own deferred_ts (never attempted) are left alone.",
    )
    retry.add_argument("ids", nargs="*", metavar="ID", help="these messages")
    retry.add_argument("--account", help="the messages of this account")
    retry.add_argument("--status", choices=["error", "deferred"], help="only this status")
    retry.add_argument(
        "--reset-attempts",
        action="store_true",
        help="a full set of retries again (default: the attempt counts are kept)",
    )


def main(argv=None) -> int:
    """Parse, load the configuration, run one command; returns the exit code."""
    try:
        return _run(argv)
    except BrokenPipeError:  # `asyncmail status | head`: the reader has all it wanted
        # point stdout at /dev/null so the interpreter's final flush does not fail again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
        code = args.func(config, args)
        sys.stdout.flush()  # a closed pipe shows here, inside main's handler
        return code
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return USAGE
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except apsw.Error as exc:
        print(f"database error: {exc}", file=sys.stderr)
        return UNAVAILABLE


if __name__ == "__main__":
    sys.exit(main())
