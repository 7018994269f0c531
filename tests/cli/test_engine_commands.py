"""`flowhook processor`: its options and its answer to bad ones."""

from __future__ import annotations

from click.testing import CliRunner

from processor.cli.main import cli


def test_processor_command_lists_its_options() -> None:
    """The help names the broker, store and data-dir options."""
    result = CliRunner().invoke(cli, ["processor", "--help"])
    assert result.exit_code == 0
    for option in ("--brokers", "--store", "--data-dir"):
        assert option in result.output


def test_processor_refuses_an_unknown_store() -> None:
    """A store other than memory or rocksdb is a usage error (exit code 2)."""
    result = CliRunner().invoke(cli, ["processor", "--store", "redis"])
    assert result.exit_code == 2 and "redis" in result.output
