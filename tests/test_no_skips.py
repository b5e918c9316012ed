"""The suite's own guard: under CI=true a skipped test is a failure."""

from __future__ import annotations

import pytest

SKIPPING = """
import pytest

def test_skipped():
    pytest.skip("redis-server is missing")

@pytest.mark.xfail(reason="known")
def test_expected_failure():
    assert False

def test_plain():
    pass
"""


@pytest.mark.parametrize(("ci", "failed", "skipped"), [("true", 1, 0), ("", 0, 1)])
def test_a_skip_fails_the_run_under_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, failed: int, skipped: int
) -> None:
    monkeypatch.setenv("CI", ci)
    pytester.makepyfile(test_sample=SKIPPING)
    result = pytester.runpytest("-p", "tests._no_skips", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=failed, skipped=skipped, xfailed=1)
    if failed:
        result.stdout.fnmatch_lines(["*skipped under CI=true*redis-server is missing*"])
