"""Console users, sessions and failed sign-ins, in one SQLite file every console process shares.

The file (`FLOWHOOK_CONSOLE_USERS`, default `<data dir>/console/users.sqlite`) is opened in
WAL mode with a busy timeout, so several console processes on one host (and the `flowhook
console users` commands) read and write it safely. Password hashes (argon2id) and TOTP
secrets live only here: never on a topic, in a log or on a page.

Single-use codes hold across processes because the last used time step is advanced with a
compare-and-set UPDATE: of two processes accepting the same code at once, one wins.
"""

from __future__ import annotations

import builtins
import hashlib
import re
import secrets
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from processor.console.auth import Principal, check_role
from processor.errors import FlowhookError

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password_hash TEXT NOT NULL,
  totp_secret TEXT, totp_enabled INTEGER NOT NULL DEFAULT 0, totp_last_step INTEGER,
  created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (token_hash TEXT PRIMARY KEY, user TEXT, csrf TEXT NOT NULL,
  stage TEXT NOT NULL, created_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS login_failures (key TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS login_failures_key ON login_failures (key, at_ms);
"""
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SESSION_TTL_MS = 12 * 3_600_000
ANONYMOUS_TTL_MS = 3_600_000
_hasher = PasswordHasher()
# Checking a name that does not exist costs the same as a wrong password (no user enumeration).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))


class UserError(FlowhookError):
    """A user command cannot be done (unknown user, name taken, bad role)."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    totp_enabled: bool
    has_pending_totp: bool

    @property
    def principal(self) -> Principal:
        return Principal(self.name, self.role, self.totp_enabled)


@dataclass(frozen=True)
class Session:
    token_hash: str
    user: str | None
    csrf: str
    stage: str  # "anonymous", "totp" (password given, code missing), "signed_in"


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class UserStore:
    """The shared users file. Each method is one short transaction."""

    def __init__(self, path: Path | str) -> None:
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=10.0)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)

    def close(self) -> None:
        self.conn.close()

    # --- users ---------------------------------------------------------------------------

    def add(self, name: str, role: str, password: str, now_ms: int) -> User:
        check_role(role)
        if not _NAME.match(name):
            raise UserError(f"user name {name!r}: use 1-64 letters, digits, '.', '-' or '_'")
        if len(password) < 10:
            raise UserError("the password must have at least 10 characters")
        try:
            self.conn.execute("INSERT INTO users (name, role, password_hash, created_ms) VALUES (?,?,?,?)",
                              (name, role, _hasher.hash(password), now_ms))
        except sqlite3.IntegrityError:
            raise UserError(f"user {name!r} exists already; use set-role or set-password") from None
        return self.get_required(name)

    def get(self, name: str) -> User | None:
        row = self.conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        return User(row["name"], row["role"], bool(row["totp_enabled"]),
                    row["totp_secret"] is not None and not row["totp_enabled"])

    def get_required(self, name: str) -> User:
        user = self.get(name)
        if user is None:
            raise UserError(f"no user {name!r}; `flowhook console users list` shows them")
        return user

    def list(self) -> list[User]:
        return [u for name in [r[0] for r in self.conn.execute("SELECT name FROM users ORDER BY name")]
                if (u := self.get(name)) is not None]

    def set_role(self, name: str, role: str) -> User:
        check_role(role)
        self.get_required(name)
        self.conn.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
        self._end_sessions(name)  # a role change takes effect at once
        return self.get_required(name)

    def set_password(self, name: str, password: str) -> None:
        self.get_required(name)
        if len(password) < 10:
            raise UserError("the password must have at least 10 characters")
        self.conn.execute("UPDATE users SET password_hash = ? WHERE name = ?", (_hasher.hash(password), name))
        self._end_sessions(name)

    def remove(self, name: str) -> None:
        self.get_required(name)
        self.conn.execute("DELETE FROM users WHERE name = ?", (name,))
        self._end_sessions(name)

    def check_password(self, name: str, password: str) -> User | None:
        row = self.conn.execute("SELECT password_hash FROM users WHERE name = ?", (name,)).fetchone()
        stored = row["password_hash"] if row is not None else _DUMMY_HASH
        try:
            _hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if _hasher.check_needs_rehash(stored):
            self.conn.execute("UPDATE users SET password_hash = ? WHERE name = ?",
                              (_hasher.hash(password), name))
        return self.get(name)

    # --- two-factor ----------------------------------------------------------------------

    def start_totp(self, name: str, secret: str) -> None:
        """Keep a new secret as pending: it signs nothing until a code from it is confirmed."""
        self.get_required(name)
        self.conn.execute("UPDATE users SET totp_secret = ?, totp_enabled = 0, totp_last_step = NULL "
                          "WHERE name = ?", (secret, name))

    def totp_secret(self, name: str) -> tuple[str | None, int | None]:
        row = self.conn.execute("SELECT totp_secret, totp_last_step FROM users WHERE name = ?",
                                (name,)).fetchone()
        return (None, None) if row is None else (row["totp_secret"], row["totp_last_step"])

    def use_totp_step(self, name: str, step: int, *, enable: bool = False) -> bool:
        """Record `step` as used; False when this or a later step was used already (a replayed code)."""
        changed = self.conn.execute(
            "UPDATE users SET totp_last_step = ?, totp_enabled = CASE WHEN ? THEN 1 ELSE totp_enabled END "
            "WHERE name = ? AND totp_secret IS NOT NULL AND (totp_last_step IS NULL OR totp_last_step < ?)",
            (step, enable, name, step)).rowcount
        return changed == 1

    def disable_totp(self, name: str) -> None:
        self.get_required(name)
        self.conn.execute("UPDATE users SET totp_secret = NULL, totp_enabled = 0, totp_last_step = NULL "
                          "WHERE name = ?", (name,))
        self._end_sessions(name)

    # --- sessions ------------------------------------------------------------------------

    def new_session(self, user: str | None, stage: str, now_ms: int) -> tuple[str, Session]:
        """A fresh random token (for the cookie) and its session; only the token's hash is stored."""
        token = secrets.token_urlsafe(32)
        ttl = SESSION_TTL_MS if user else ANONYMOUS_TTL_MS
        session = Session(_hash_token(token), user, secrets.token_urlsafe(32), stage)
        self.conn.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?)",
                          (session.token_hash, user, session.csrf, stage, now_ms, now_ms + ttl))
        self.conn.execute("DELETE FROM sessions WHERE expires_ms < ?", (now_ms,))
        return token, session

    def session(self, token: str, now_ms: int) -> Session | None:
        row = self.conn.execute("SELECT * FROM sessions WHERE token_hash = ? AND expires_ms >= ?",
                                (_hash_token(token), now_ms)).fetchone()
        if row is None:
            return None
        return Session(row["token_hash"], row["user"], row["csrf"], row["stage"])

    def end_session(self, token_hash: str) -> None:
        self.conn.execute("DELETE FROM sessions WHERE token_hash = ?", (token_hash,))

    def _end_sessions(self, name: str) -> None:
        self.conn.execute("DELETE FROM sessions WHERE user = ?", (name,))

    # --- failed sign-ins -----------------------------------------------------------------

    def failures(self, key: str, since_ms: int) -> builtins.list[int]:  # `list` is a method here
        return [r[0] for r in self.conn.execute(
            "SELECT at_ms FROM login_failures WHERE key = ? AND at_ms >= ?", (key, since_ms))]

    def add_failure(self, keys: builtins.list[str], now_ms: int, keep_ms: int) -> None:
        self.conn.executemany("INSERT INTO login_failures VALUES (?,?)", [(k, now_ms) for k in keys])
        self.conn.execute("DELETE FROM login_failures WHERE at_ms < ?", (now_ms - keep_ms,))
