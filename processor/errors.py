"""The root exception and the few errors shared across edges.

Sub-packages keep their own errors in their own modules, all derived from FlowhookError.
"""

from __future__ import annotations

from dataclasses import dataclass


class FlowhookError(Exception):
    """Root of every error Flowhook raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input: where it is and how to fix it."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


def warning_line(warning: Problem) -> str:
    """A warning as `flows validate` and the console print it (problems print as `str(problem)`)."""
    return f"{warning.file}:{warning.line or ''}: {warning.field}: warning: {warning.message}"


class InputError(FlowhookError):
    """A file or record given by the user cannot be used; carries every problem found."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigError(FlowhookError):
    """A setting from flags or the environment is wrong."""


class BrokerError(FlowhookError):
    """The embedded broker could not be started or reached."""


class KafkaUnavailable(FlowhookError):
    """Java or the Apache Kafka jars are missing; the message says what to run."""
