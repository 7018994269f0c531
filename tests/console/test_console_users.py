"""The shared users file (argon2 hashes, single-use TOTP steps across processes, sessions), `users` CLI."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pyotp
import pytest
from click.testing import CliRunner

from processor import records
from processor.cli.main import cli
from processor.console import auth
from processor.console.users import UserError, UserStore
from processor.settings import Settings
from tests.dispatch_helpers import read_values

PASSWORD = "correct horse battery"


def test_passwords_are_stored_as_argon2id_hashes(tmp_path: Path) -> None:
    """The file holds an argon2id hash, never the password; the right password checks, a wrong one not."""
    store = UserStore(tmp_path / "users.sqlite")
    store.add("alice", "manager", PASSWORD, 0)
    raw = sqlite3.connect(tmp_path / "users.sqlite").execute("SELECT password_hash FROM users").fetchone()[0]
    assert raw.startswith("$argon2id$") and PASSWORD not in raw
    assert store.check_password("alice", PASSWORD) is not None
    assert store.check_password("alice", PASSWORD + "x") is None
    assert store.check_password("nobody", PASSWORD) is None


def test_bad_names_roles_and_short_passwords_are_refused(tmp_path: Path) -> None:
    """A user needs a plain name, a known role and a password of 10 characters or more."""
    store = UserStore(tmp_path / "users.sqlite")
    with pytest.raises(UserError, match="user name"):
        store.add("<b>", "manager", PASSWORD, 0)
    with pytest.raises(ValueError, match="unknown role"):
        store.add("bob", "root", PASSWORD, 0)
    with pytest.raises(UserError, match="10 characters"):
        store.add("bob", "manager", "short", 0)
    store.add("bob", "manager", PASSWORD, 0)
    with pytest.raises(UserError, match="exists already"):
        store.add("bob", "analyst", PASSWORD, 0)


def test_a_totp_step_is_used_once_across_two_processes(tmp_path: Path) -> None:
    """Two stores on one file (two console processes): the same step is accepted by only one of them."""
    first, second = UserStore(tmp_path / "u.sqlite"), UserStore(tmp_path / "u.sqlite")
    first.add("alice", "owner", PASSWORD, 0)
    first.start_totp("alice", pyotp.random_base32())
    assert first.use_totp_step("alice", 100, enable=True)
    assert not second.use_totp_step("alice", 100)
    assert not second.use_totp_step("alice", 99)
    assert second.use_totp_step("alice", 101)
    assert second.get_required("alice").totp_enabled


def test_a_pending_secret_does_not_count_as_two_factor(tmp_path: Path) -> None:
    """Starting enrolment keeps the secret pending; two-factor is on only after a confirmed code."""
    store = UserStore(tmp_path / "u.sqlite")
    store.add("m", "manager", PASSWORD, 0)
    store.start_totp("m", pyotp.random_base32())
    user = store.get_required("m")
    assert user.has_pending_totp and not user.totp_enabled and not user.principal.two_factor


def test_sessions_store_only_a_hash_and_end_on_role_change(tmp_path: Path) -> None:
    """The cookie token is not in the file; changing a role ends the user's sessions."""
    store = UserStore(tmp_path / "u.sqlite")
    store.add("m", "manager", PASSWORD, 0)
    token, session = store.new_session("m", "signed_in", 1_000)
    assert store.session(token, 2_000) == session
    dump = "\n".join(sqlite3.connect(tmp_path / "u.sqlite").iterdump())
    assert token not in dump
    store.set_role("m", "analyst")
    assert store.session(token, 2_000) is None


def test_sessions_expire(tmp_path: Path) -> None:
    """An anonymous session lasts an hour, a signed-in one twelve."""
    store = UserStore(tmp_path / "u.sqlite")
    anon, _ = store.new_session(None, "anonymous", 0)
    signed, _ = store.new_session("x", "signed_in", 0)
    assert store.session(anon, 3_600_001) is None and store.session(signed, 3_600_001) is not None
    assert store.session(signed, 12 * 3_600_000 + 1) is None


def _env(settings: Settings, tmp_path: Path) -> dict[str, str]:
    return {**settings.as_env(), "FLOWHOOK_CONSOLE_USERS": str(tmp_path / "users.sqlite")}


def test_users_commands_change_the_file_and_write_audit_records(settings: Settings, tmp_path: Path) -> None:
    """add, set-role, set-password, remove each change the users file and write one audit record."""
    runner, env = CliRunner(), _env(settings, tmp_path)
    steps = [
        (["console", "users", "add", "dana", "--role", "manager", "--password-stdin"], PASSWORD + "\n"),
        (["console", "users", "set-role", "dana", "admin"], None),
        (["console", "users", "set-password", "dana", "--password-stdin"], PASSWORD + "!\n"),
    ]
    for args, stdin in steps:
        result = runner.invoke(cli, args, input=stdin, env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
    listed = runner.invoke(cli, ["console", "users", "list"], env=env)
    assert "dana\tadmin\ttwo-factor off" in listed.output
    store = UserStore(tmp_path / "users.sqlite")
    assert store.check_password("dana", PASSWORD + "!") is not None
    assert runner.invoke(cli, ["console", "users", "remove", "dana"], env=env).exit_code == 0
    assert store.get("dana") is None
    audit = asyncio_run(read_values(settings, settings.topics.audit))
    assert [a["action"] for a in audit] == ["user.add", "user.set_role", "user.set_password", "user.remove"]
    for record in audit:
        assert records.validation_error("audit", record) is None
        assert PASSWORD not in orjson.dumps(record).decode() and "argon2" not in orjson.dumps(record).decode()
    assert audit[1]["detail"] == {"user": "dana", "from": "manager", "to": "admin"}


def test_enable_2fa_from_the_command_line_needs_a_matching_code(settings: Settings, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """enable-2fa shows the secret, asks for a code and turns two-factor on only when it matches."""
    secret = pyotp.random_base32()
    monkeypatch.setattr(auth, "new_totp_secret", lambda: secret)
    env = _env(settings, tmp_path)
    UserStore(tmp_path / "users.sqlite").add("erin", "manager", PASSWORD, 0)
    wrong = CliRunner().invoke(cli, ["console", "users", "enable-2fa", "erin"], input="000000\n", env=env)
    if pyotp.TOTP(secret).now() != "000000":
        assert wrong.exit_code != 0
        assert not UserStore(tmp_path / "users.sqlite").get_required("erin").totp_enabled
    right = CliRunner().invoke(cli, ["console", "users", "enable-2fa", "erin"],
                               input=pyotp.TOTP(secret).now() + "\n", env=env)
    assert right.exit_code == 0, right.output
    assert f"secret: {secret}" in right.output
    assert UserStore(tmp_path / "users.sqlite").get_required("erin").totp_enabled


def asyncio_run(coro):  # type: ignore[no-untyped-def]
    import asyncio

    return asyncio.run(coro)
