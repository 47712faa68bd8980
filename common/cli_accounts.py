"""``asyncmail accounts add|list|show|delete``: SMTP accounts, straight in the database."""

from __future__ import annotations

import getpass
import os
import sys
import time

from pydantic import ValidationError

from common import crypto, store, wakeup
from common.cli_commands import connect
from common.cli_output import OK, REFUSED, CliError, emit, pairs, table, when
from common.config import Config
from common.models import Account, explain

ACCOUNT_FLAGS = (
    "host",
    "port",
    "user",
    "use_tls",
    "starttls",
    "ttl",
    "timeout",
    "limit_per_second",
    "limit_per_minute",
    "limit_per_hour",
    "limit_per_day",
    "limit_behavior",
    "batch_size",
)


def _password(args) -> str | None:
    if args.password_env:
        value = os.environ.get(args.password_env)
        if value is None:
            raise CliError(f"--password-env: the variable {args.password_env} is not set")
        return value
    if args.password_prompt or (args.user and sys.stdin.isatty()):
        return getpass.getpass(f"SMTP password for {args.user or args.id}: ")
    return None


def cmd_accounts_add(config: Config, args) -> int:
    """Create or replace an SMTP account; the password comes from a prompt or a variable."""
    fields = {name: getattr(args, name) for name in ACCOUNT_FLAGS}
    fields = {"id": args.id, **{k: v for k, v in fields.items() if v is not None}}
    fields["password"] = _password(args)
    try:
        account = Account.model_validate(fields)
    except ValidationError as exc:
        raise CliError("invalid account: " + explain(exc)) from None
    row = account.model_dump()
    row["password"] = crypto.seal(account.password, config.secret_key)
    conn = connect(config)
    store.upsert_account(conn, row, int(time.time()))
    wakeup.notify(config.run_dir, wakeup.DISPATCHER)
    saved = store.get_account(conn, account.id)
    emit(args, {"ok": True, "account": saved}, f"saved account {account.id}")
    return OK


def _limits(account: dict) -> str:
    units = (("second", "s"), ("minute", "min"), ("hour", "h"), ("day", "d"))
    parts = [
        f"{account[f'limit_per_{u}']}/{short}"
        for u, short in units
        if account.get(f"limit_per_{u}")
    ]
    return " ".join(parts) or "none"


def _tls(account: dict) -> str:
    if account["use_tls"] or (account["use_tls"] is None and account["port"] == 465):
        return "implicit"
    return "starttls" if account["starttls"] else "none"


def cmd_accounts_list(config: Config, args) -> int:
    """List SMTP accounts (never their passwords)."""
    accounts = store.list_accounts(connect(config))
    rows = [{**a, "tls": _tls(a), "limits": _limits(a)} for a in accounts]
    human = table(rows, ["id", "host", "port", "user", "tls", "limits", "limit_behavior"])
    emit(args, {"ok": True, "accounts": accounts}, human if accounts else "no accounts")
    return OK


def cmd_accounts_show(config: Config, args) -> int:
    """Show one account (never its password)."""
    account = store.get_account(connect(config), args.id)
    if account is None:
        raise CliError(f"no account {args.id!r}", REFUSED)
    shown = {
        **account,
        "created_at": when(account["created_at"]),
        "updated_at": when(account["updated_at"]),
    }
    emit(args, {"ok": True, "account": account}, pairs(shown))
    return OK


def cmd_accounts_delete(config: Config, args) -> int:
    """Delete an account; refused while it has unsent messages unless --purge."""
    deleted, unsent = store.delete_account(connect(config), args.id, args.purge)
    if deleted:
        emit(
            args,
            {"ok": True, "removed": args.id, "purged_messages": unsent},
            f"deleted account {args.id} ({unsent} unsent messages purged)",
        )
        return OK
    if unsent:
        raise CliError(
            f"account {args.id!r} has {unsent} unsent messages; delete them first or pass --purge",
            REFUSED,
        )
    raise CliError(f"no account {args.id!r}", REFUSED)
