"""The ``async-jobs`` options: help on every one, each command listing only what applies to
it, ``--allow-insecure-http`` and ``--token-url`` reaching the clients, and the library's
keyword-argument messages said in the command line's terms. In process (``cli.main`` in a
worker thread)."""

from __future__ import annotations

import argparse

import pytest

import async_jobs as aj
from async_jobs import cli
from async_jobs._http import check_base_url
from async_jobs.testing import FakeApiServer
from async_jobs.testing._scenarios import SCENARIOS

from .conftest import TOKEN
from .test_cli import _cli, _lines, _set_env

pytestmark = pytest.mark.anyio


def _parsers(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every parser of the command tree, with the command words leading to it."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _parsers(sub, (*path, name))
    return found


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {option for action in parser._actions for option in action.option_strings}


def test_every_option_and_argument_of_every_command_has_help() -> None:
    missing = []
    parsers = _parsers(cli.build_parser())
    assert len(parsers) > 25  # the walk reached the leaves
    for path, parser in parsers:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path) or 'async-jobs'}: {action.dest}")
    assert missing == []


def test_each_command_lists_only_the_options_that_apply_to_it() -> None:
    commands = dict(_parsers(cli.build_parser()))
    api = {"--base-url", "--token-file", "--allow-insecure-http"}
    server = commands[("fake-server",)]
    assert _options(server) == {
        "-h",
        "--help",
        "--host",
        "--port",
        "--scenario",
        "--speed",
        "--token-file",  # the token the server accepts
        "--json",
    }
    assert "the token the server accepts" in server.format_help()
    assert "/_control/jobs" in server.format_help()
    for path in (("demo",), ("durable", "status")):
        assert not _options(commands[path]) & (api | {"--token-url"}), path
        assert {"--json", "-v"} <= _options(commands[path])
    for path, parser in commands.items():
        if path[:1] == ("zoo",):
            assert api <= _options(parser) and "--token-url" not in _options(parser), path
        if path[:1] == ("metafold",):
            assert api | {"--token-url"} <= _options(parser), path
    assert set(cli.FAKE_SCENARIOS) == set(SCENARIOS)


def test_json_before_fake_server_is_its_own_json() -> None:
    parser = cli.build_parser()
    for argv in (["--json", "fake-server"], ["fake-server", "--json"]):
        args = parser.parse_args(argv)
        cli._check_applies(parser, args)
        assert args.server_json is True and not hasattr(args, "json")


@pytest.mark.parametrize(
    "argv",
    [
        ["--base-url", "http://127.0.0.1:9", "demo"],
        ["--token-url", "http://127.0.0.1:9/oauth/token", "zoo", "ops", "list"],
        ["-v", "fake-server", "--port", "-1"],  # the port: a broken check fails, not hangs
        ["--allow-insecure-http", "durable", "status"],
        ["zoo", "ops", "get", ""],
        ["zoo", "ops", "list", "--base-url", "ftp://example.com"],
        ["metafold", "jobs", "list", "--project", ""],
        ["zoo", "conversions", "retrigger", "d", "--statuses", "a,,b"],
    ],
)
async def test_usage_errors_name_the_option(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        await _cli(*argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err


def test_library_keyword_messages_are_said_in_cli_terms() -> None:
    """Each translated message, raised by the library itself (so a change of its wording
    shows here): the CLI's text names no keyword argument."""
    raised = []
    for attempt in (
        lambda: aj.MetafoldClient(token="t").resolve_project_id(),
        lambda: check_base_url("http://example.com"),
        lambda: check_base_url("ftp://example.com"),
        lambda: aj.metafold.build_sort("created"),
    ):
        with pytest.raises(ValueError) as error:
            attempt()
        raised.append(str(error.value))
    said = [cli.cli_terms(message) for message in raised]
    assert said[0].endswith("pass --project or set METAFOLD_PROJECT_ID")
    assert "pass --allow-insecure-http" in said[1]
    assert "ZOO_HOST or METAFOLD_BASE_URL" in said[2]
    assert said[3].startswith("--sort must look like")
    for message in said:
        assert "=" not in message and "base_url" not in message, message


async def test_cli_errors_name_flags_not_keywords(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _set_env(monkeypatch, METAFOLD_ACCESS_TOKEN=TOKEN, METAFOLD_BASE_URL=server.url)
    assert await _cli("metafold", "jobs", "get", "some-job") == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert "pass --project or set METAFOLD_PROJECT_ID" in err and "project_id=" not in err
    assert (
        await _cli("metafold", "jobs", "list", "--project", "p1", "--sort", "newest")
        == cli.EXIT_USAGE
    )
    assert "--sort must look like" in capsys.readouterr().err
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    monkeypatch.setenv("ZOO_HOST", "ftp://example.com")
    assert await _cli("zoo", "ops", "get", "x") == cli.EXIT_USAGE
    assert "(ZOO_HOST or METAFOLD_BASE_URL) must be an http(s) URL" in capsys.readouterr().err
    assert not server.requests


async def test_allow_insecure_http_reaches_the_client(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """0.0.0.0 is not a loopback address to the library, yet connecting to it reaches this
    machine (the fake listens on 127.0.0.1): plain http there needs the flag."""
    op = server.zoo.add_operation(timeline=[("completed", None)])
    monkeypatch.setenv("ZOO_API_TOKEN", TOKEN)
    url = f"http://0.0.0.0:{server.port}"
    assert await _cli("zoo", "ops", "get", op.id, "--base-url", url, "--json") == 2
    err = capsys.readouterr().err
    assert "use https or pass --allow-insecure-http" in err and "allow_insecure_http" not in err
    assert not server.requests
    argv = ("zoo", "ops", "get", op.id, "--base-url", url, "--allow-insecure-http", "--json")
    assert await _cli(*argv) == 0
    assert _lines(capsys.readouterr().out)[0]["id"] == op.id
    # Before the command's name too.
    assert await _cli("--allow-insecure-http", "--base-url", url, "zoo", "ops", "get", op.id) == 0


async def test_token_url_exchanges_metafold_client_credentials_there(
    server: FakeApiServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    server.metafold.add_client("cli-client", "cli-secret")
    job = server.metafold.add_job("p1", timeline=[("success", None)])
    _set_env(
        monkeypatch,
        METAFOLD_CLIENT_ID="cli-client",
        METAFOLD_CLIENT_SECRET="cli-secret",
        METAFOLD_BASE_URL=server.url,
        METAFOLD_PROJECT_ID="p1",
    )
    token_url = f"{server.url}/oauth/token"
    assert await _cli("metafold", "jobs", "list", "--token-url", token_url, "--json") == 0
    out, err = capsys.readouterr()
    assert [record["id"] for record in _lines(out)] == [job.id], err
    assert server.metafold.exchanges == 1
    assert "cli-secret" not in out + err
