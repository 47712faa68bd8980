"""``asyncmail accounts add|list|show|delete|usage``: SMTP accounts of a tenant (--tenant),
straight in the database."""

from __future__ import annotations

import getpass
import os
import sys
import time

from pydantic import ValidationError

from cli.output import OK, REFUSED, CliError, emit, pairs, table, when
from cli.tenants import tenant
from common import operations, store
from common.config import Config
from common.enums import DEFAULT_TENANT
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
    "max_recipients_per_transaction",
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
    conn = store.db.open_database(config)
    saved = operations.save_account(conn, config, tenant(conn, args), account, time.time())
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
    conn = store.db.open_database(config)
    accounts = store.accounts.list_all(conn, tenant(conn, args))
    rows = [{**a, "tls": _tls(a), "limits": _limits(a)} for a in accounts]
    human = table(rows, ["id", "host", "port", "user", "tls", "limits", "limit_behavior"])
    emit(args, {"ok": True, "accounts": accounts}, human if accounts else "no accounts")
    return OK


def cmd_accounts_show(config: Config, args) -> int:
    """Show one account (never its password)."""
    conn = store.db.open_database(config)
    account = store.accounts.get(conn, tenant(conn, args), args.id)
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
    conn = store.db.open_database(config)
    try:
        done = operations.delete_account(conn, tenant(conn, args), args.id, args.purge, time.time())
    except operations.Refused as exc:
        raise CliError(str(exc), REFUSED) from None
    human = f"deleted account {args.id} ({done.purged} unsent messages purged)"
    if done.in_flight:
        human += f"; {len(done.in_flight)} being sent right now were left to finish"
    if done.awaiting_report:
        human += f"; {done.awaiting_report} kept until their delivery reports are out"
    answer = {"ok": True, "removed": args.id, "purged_messages": done.purged,
              "in_flight": done.in_flight, "awaiting_report": done.awaiting_report}  # fmt: skip
    emit(args, answer, human)
    return OK


def cmd_accounts_usage(config: Config, args) -> int:
    """Sends in each rate-limit window against the limit, per account (or one account)."""
    conn = store.db.open_database(config)
    now, owner = time.time(), tenant(conn, args)
    ids = [args.id] if args.id else [a["id"] for a in store.accounts.list_all(conn, owner)]
    if not args.id and config.has_default_account and owner == DEFAULT_TENANT:
        ids.append(None)  # the [smtp] account of messages without account_id
    try:
        usages = [operations.usage(conn, config, owner, account_id, now) for account_id in ids]
    except operations.Refused as exc:
        raise CliError(str(exc), REFUSED) from None
    rows = [
        {
            "account": u["account_id"] or "(default)",
            **{w["window"]: _used(w) for w in u["windows"]},
            "full until": when(
                max((w["free_at"] for w in u["windows"] if w["free_at"]), default=None)
            ),
        }
        for u in usages
    ]
    columns = (
        ["account", *(w["window"] for w in usages[0]["windows"]), "full until"] if rows else []
    )
    emit(args, {"ok": True, "usage": usages}, table(rows, columns) if rows else "no accounts")
    return OK


def _used(window: dict) -> str:
    """'used/limit', or the count alone for a window without a limit."""
    return f"{window['used']}" if window["limit"] is None else f"{window['used']}/{window['limit']}"
