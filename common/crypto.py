"""SMTP passwords at rest: Fernet-encrypted when ASYNCMAIL_SECRET_KEY is set."""

from __future__ import annotations

import base64
import hashlib
import secrets

PREFIX = "enc:"


class SecretError(RuntimeError):
    """A stored password cannot be decrypted (wrong or missing ASYNCMAIL_SECRET_KEY)."""


def _fernet(secret_key: str):
    from cryptography.fernet import Fernet  # imported only when encryption is in use

    digest = hashlib.sha256(secret_key.encode()).digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def seal(password: str | None, secret_key: str | None) -> str | None:
    """The form a password is stored in: encrypted with the key, or as given without one."""
    if password is None or not secret_key:
        return password
    return PREFIX + _fernet(secret_key).encrypt(password.encode()).decode()


def unseal(stored: str | None, secret_key: str | None) -> str | None:
    """The clear password from its stored form."""
    if stored is None or not stored.startswith(PREFIX):
        return stored
    if not secret_key:
        raise SecretError("password is encrypted but ASYNCMAIL_SECRET_KEY is not set")
    from cryptography.fernet import InvalidToken

    try:
        return _fernet(secret_key).decrypt(stored[len(PREFIX) :].encode()).decode()
    except InvalidToken:
        raise SecretError("password cannot be decrypted with ASYNCMAIL_SECRET_KEY") from None


def new_token() -> str:
    """A strong random API token."""
    return secrets.token_urlsafe(32)
