"""Typing a user can rely on: a user's script in the README's patterns type-checks with
``mypy --strict`` and with pyright in strict mode, the public package's type completeness
(``pyright --verifytypes``) stays high, and each ``Literal`` alias of an enumerated parameter
lists exactly the values of its runtime tuple.

The type checkers run as subprocesses on the package in this checkout (never on another
installed copy), all three at once, started as soon as collection is done so that they run
while the rest of the suite does; pyright comes from the ``test`` extra (``pyright[nodejs]``:
the wheel bundles pyright and its Node.js), so a missing pyright fails these tests, it never
skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

import async_jobs as aj
from async_jobs import metafold
from async_jobs.models import metafold as mf_models
from async_jobs.models import zoo as zoo_models

#: The checkout whose ``async_jobs`` the checkers must see (not an installed copy).
ROOT = Path(aj.__file__).resolve().parent.parent
#: The least ``pyright --verifytypes`` completeness the package keeps.
MIN_COMPLETENESS = 0.98

# -- Literal aliases and their runtime tuples -------------------------------------------------


@pytest.mark.parametrize(
    ("alias", "values"),
    [
        (zoo_models.OperationStatus, zoo_models.OPERATION_STATUSES),
        (zoo_models.OperationSortMode, zoo_models.OPERATION_SORT_MODES),
        (zoo_models.ConversionStatus, zoo_models.CONVERSION_STATUSES),
        (zoo_models.ConversionStatusFilter, zoo_models.CONVERSION_STATUS_FILTERS),
        (zoo_models.ConversionPhase, zoo_models.CONVERSION_PHASES),
        (zoo_models.ConversionSortMode, zoo_models.CONVERSION_SORT_MODES),
        (mf_models.JobSortField, mf_models.JOB_SORT_FIELDS),
        (mf_models.WorkflowSortField, mf_models.WORKFLOW_SORT_FIELDS),
        (mf_models.JobSort, mf_models.JOB_SORTS),
        (mf_models.WorkflowSort, mf_models.WORKFLOW_SORTS),
    ],
)
def test_literal_lists_exactly_the_runtime_values(alias: Any, values: tuple[str, ...]) -> None:
    assert get_args(alias) == values


@pytest.mark.parametrize(
    ("function", "parameter", "alias"),
    [
        (aj.ZooClient.list_async_operations, "status", zoo_models.OperationStatus),
        (aj.ZooClient.list_async_operations, "sort_by", zoo_models.OperationSortMode),
        (aj.ZooClient.iter_async_operations, "status", zoo_models.OperationStatus),
        (aj.ZooClient.iter_async_operations, "sort_by", zoo_models.OperationSortMode),
        (aj.ZooClient.list_dataset_conversions, "sort_by", zoo_models.ConversionSortMode),
        (aj.ZooClient.list_dataset_conversions, "filter", zoo_models.ConversionStatusFilter),
        (aj.ZooClient.list_dataset_conversions, "phase", zoo_models.ConversionPhase),
        (aj.ZooClient.iter_dataset_conversions, "sort_by", zoo_models.ConversionSortMode),
        (aj.ZooClient.iter_dataset_conversions, "filter", zoo_models.ConversionStatusFilter),
        (aj.ZooClient.iter_dataset_conversions, "phase", zoo_models.ConversionPhase),
        (aj.MetafoldClient.list_jobs, "sort", mf_models.JobSort),
        (aj.MetafoldClient.list_workflows, "sort", mf_models.WorkflowSort),
    ],
)
def test_enumerated_parameter_is_literal_or_str(
    function: Callable[..., Any], parameter: str, alias: Any
) -> None:
    """``Literal[...] | str``: the known values complete in editors, any str type-checks."""
    members = get_args(get_type_hints(function)[parameter])
    assert alias in members
    assert str in members


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (metafold.JobSortSpec, mf_models.JobSortField),
        (metafold.WorkflowSortSpec, mf_models.WorkflowSortField),
    ],
)
def test_metafold_sort_tuple_form_names_the_known_fields(spec: Any, field: Any) -> None:
    """``sort=(field, descending)``: the field is ``Literal[...] | str`` too."""
    tuple_forms = [arg for arg in get_args(spec) if get_origin(arg) is tuple]
    assert [get_args(form) for form in tuple_forms] == [(field | str, bool)]


# -- a user's script, type-checked ------------------------------------------------------------

#: What a user writes after reading the README. Checked, never run. ``assert_type`` pins
#: what inference must give (an Any slipping in fails it); annotated assignments stand for
#: what a user writes where the library cannot know the job type (``except`` clauses).
USER_SCRIPT = '''
"""A user's script in the README's patterns."""

from __future__ import annotations

import asyncio

import anyio
from typing_extensions import assert_type

import async_jobs as aj
from async_jobs.metafold import Not, q


async def zoo_operations(op_id: str, configured_sort: str) -> None:
    async with aj.ZooClient() as zoo:
        page = await zoo.list_async_operations(
            status="completed", sort_by="created_at_descending", limit=100, page_token=None
        )
        assert_type(page, aj.Page[aj.AsyncOperation])
        print(page.next_page, [op.id for op in page.items])
        # A sort mode read from a config file is a plain str: it type-checks too.
        async for item in zoo.iter_async_operations(
            status=["queued", "in_progress"], sort_by=configured_sort, max_items=500
        ):
            assert_type(item, aj.AsyncOperation)
            print(item.id, item.status)

        op = await zoo.get_async_operation(op_id)
        print(op.status, op.job_state, op.is_terminal)
        final = await aj.wait_until_terminal(
            zoo.async_operation(op.id),
            timeout=600,
            poll=aj.PollPolicy(initial=1.0),
            on_update=lambda o: print(o.status),
            stall_timeout=30,
        )
        assert_type(final, aj.AsyncOperation)
        if final.job_state is aj.JobState.FAILED:
            print("failed:", final.error)

        try:
            await aj.wait_until_terminal(
                zoo.async_operation(op_id), timeout=5, raise_on_failure=True, stall_timeout=30
            )
        except aj.WaitTimeout as exc:
            last: aj.AsyncOperation | None = exc.last
            print("still", last.status if last is not None else "never seen")
        except aj.PollStalled as exc:
            stalled: aj.AsyncOperation | None = exc.last
            print("no successful poll lately:", exc.__cause__, stalled)
        except aj.JobFailed as exc:
            failed: aj.AsyncOperation = exc.job
            print("failed:", failed.error)


async def dataset_conversions(dataset_id: str, conversion_id: str) -> None:
    async with aj.ZooClient() as zoo:
        async for conv in zoo.iter_dataset_conversions(
            dataset_id, filter="status:in_progress", sort_by="phase_descending", q="gears/"
        ):
            assert_type(conv, aj.DatasetConversion)
            print(conv.id, conv.file_path, conv.phase, conv.progress)
        page = await zoo.list_dataset_conversions(dataset_id, phase="salon", limit=10)
        assert_type(page, aj.Page[aj.DatasetConversion])

        shown = 0.0

        def report(conv: aj.DatasetConversion) -> None:
            nonlocal shown
            shown = conv.progress if conv.progress is not None else shown
            print(conv.status, conv.phase, f"{shown:.0%}")

        ref = zoo.dataset_conversion(dataset_id, conversion_id)
        assert_type(ref, aj.JobRef[aj.DatasetConversion])
        async for job in aj.watch(ref, stall_timeout=30):
            assert_type(job, aj.DatasetConversion)
            print(job.status, job.progress)
        salon = await aj.wait_until(ref, lambda conv: conv.phase == "salon", timeout=600)
        assert_type(salon, aj.DatasetConversion)
        schedule = {aj.JobState.PENDING: aj.PollPolicy(initial=30.0)}
        final = await aj.wait_until_terminal(ref, timeout=1800, on_update=report, poll=schedule)
        assert_type(final, aj.DatasetConversion)
        try:
            await aj.wait_until(ref, lambda conv: conv.progress == 1.0)
        except aj.ConditionNotMet as missed:
            print(missed.job)
        whole = await aj.wait_until_terminal(zoo.dataset(dataset_id), timeout=3600)
        assert_type(whole, aj.DatasetStats)
        print(whole.by_status, whole.progress)
        if final.job_state is aj.JobState.SUCCEEDED:
            full = await zoo.get_dataset_conversion(dataset_id, final.id)
            print(full.salon_kcl_output, full.salon_kcl_snapshot_images[0].data[:8])
        else:
            print(final.status, final.error)


async def metafold_jobs() -> None:
    async with aj.MetafoldClient(project_id="my-project") as mf:
        jobs = await mf.list_jobs(
            sort=("created", True),
            q=q(state="started", type="implicit/*", name=Not("scratch *")),
        )
        assert_type(jobs, list[aj.MetafoldJob])
        for job in jobs:
            print(job.id, job.state, job.created)
        newest = await mf.list_jobs(sort="created:-1")
        workflows = await mf.list_workflows(sort="started:1")
        print(len(newest), len(workflows))

        one = await aj.wait_until_terminal(mf.job(jobs[0].id), timeout=600)
        assert_type(one, aj.MetafoldJob)
        print(one.job_state, one.error, one.outputs)
        wf = await aj.wait_until_terminal(mf.workflow("workflow-id"), timeout=3600)
        assert_type(wf, aj.MetafoldWorkflow)
        started = await mf.create_workflow("jobs: {}", parameters={"a.b": "1"})
        assert_type(started, aj.MetafoldWorkflow)
        await aj.wait_until_terminal(mf.workflow(started.id), timeout=60, cancel_on_timeout=True)
        assert_type(await mf.cancel_workflow(started.id), aj.MetafoldWorkflow)
        for step in await aj.wait_for_workflow_jobs(mf, wf.id, timeout=3600, fail_fast=False):
            print(step.name, step.state, step.needs)


async def many_jobs(
    op_id: str, dataset_id: str, conversion_ids: list[str], job_id: str
) -> None:
    async with aj.ZooClient() as zoo, aj.MetafoldClient(project_id="my-project") as mf:
        async with aj.Watcher(
            zoo,
            mf,
            poll=aj.PollPolicy(initial=1.0),
            rate_limit=20,
            max_concurrency=16,
            on_update=print,
            stall_timeout=30,
        ) as watcher:
            ref = zoo.async_operation(op_id)
            fut = watcher.add(ref)
            assert_type(fut, asyncio.Future[aj.AsyncOperation])
            futures = watcher.add_many(
                zoo.dataset_conversion(dataset_id, c) for c in conversion_ids
            )
            done = watcher.add(mf.job(job_id), on_update=lambda j: print(j.state))
            assert_type(done, asyncio.Future[aj.MetafoldJob])
            seen = watcher.last(ref)
            assert_type(seen, aj.AsyncOperation | None)
            if seen is not None:
                print(seen.status)
            state = watcher.snapshot()
            print(watcher.pending, watcher.done, len(futures))
            with anyio.move_on_after(60):
                op: aj.AsyncOperation = await fut
                print(op.status)
            async for finished in watcher.as_completed():
                print(finished.id, finished.job_state)
            print((await done).job_state)

        async with aj.Watcher.restore(state, zoo, mf) as again:
            try:
                finals = await again.wait_all(timeout=600)
                print([job.job_state.value for job in finals])
            except aj.WaitTimeout as exc:
                print("not done:", exc.last)
'''


def _checker_env() -> dict[str, str]:
    env = dict(os.environ)
    # The package in this checkout wins over any installed copy; pyright asks PyPI for a newer
    # version of itself unless told not to.
    env["MYPYPATH"] = str(ROOT)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYRIGHT_PYTHON_IGNORE_WARNINGS"] = "1"
    # pyright --verifytypes asks the ``python`` on PATH for its search paths, whatever
    # --pythonpath says: make it this interpreter.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("MYPY_CACHE_DIR", None)
    return env


def _lower_priority() -> None:
    """In the checker's process before it runs: below the tests' priority, so that running
    in the background it takes only CPU time the tests leave idle."""
    os.nice(10)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=cwd,
        env=_checker_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_lower_priority if hasattr(os, "nice") else None,
    )


def _finish(name: str, proc: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        return -1, f"{name} timed out\n{output}"
    return proc.returncode, output


class TypeChecks:
    """The three checker runs, started together in a directory of their own: ``mypy
    --strict`` and strict pyright on :data:`USER_SCRIPT`, and ``pyright --verifytypes`` on
    the package. They are independent and mostly wait on one core each."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="async-jobs-typing-"))
        self.script = self.root / "script" / "user_script.py"
        self.script.parent.mkdir()
        self.script.write_text(textwrap.dedent(USER_SCRIPT).lstrip())
        (self.script.parent / "pyrightconfig.json").write_text(
            json.dumps(
                {
                    "include": [self.script.name],
                    "typeCheckingMode": "strict",
                    "extraPaths": [str(ROOT)],
                    "reportMissingModuleSource": "none",
                }
            )
        )
        verify = self.root / "verify"
        verify.mkdir()
        here = self.script.parent
        mypy = [sys.executable, "-m", "mypy", "--strict"]
        mypy += ["--follow-imports=silent"]  # the user's script is under test, not the library
        mypy += ["--cache-dir", str(here / ".mypy_cache"), self.script.name]
        pyright = [sys.executable, "-m", "pyright", "--pythonpath", sys.executable]
        verifytypes = [*pyright, "--verifytypes", "async_jobs", "--ignoreexternal"]
        self.procs = {
            "mypy": _start(mypy, here),
            "pyright": _start([*pyright, "-p", str(here)], here),
            "pyright --verifytypes": _start([*verifytypes, "--outputjson"], verify),
        }
        self.results: dict[str, tuple[int, str]] = {}

    def result(self, name: str) -> tuple[int, str]:
        """The exit code and output of checker ``name`` (waiting for it to end)."""
        if name not in self.results:
            self.results[name] = _finish(name, self.procs[name])
        return self.results[name]

    def close(self) -> None:
        """Stop any checker still running and remove the directory."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        shutil.rmtree(self.root, ignore_errors=True)


_checks: TypeChecks | None = None


def start_in_background() -> None:
    """Start the checkers as soon as the run knows it has tests here (``conftest.py`` calls
    this once collection is done): they run while the rest of the suite does."""
    global _checks
    if _checks is None:
        _checks = TypeChecks()


def stop_in_background() -> None:
    """Stop them (end of the run, whether or not a test here ran)."""
    global _checks
    checks, _checks = _checks, None
    if checks is not None:
        checks.close()


@pytest.fixture(scope="session")
def type_checks() -> TypeChecks:
    start_in_background()  # normally started already, at the end of collection
    assert _checks is not None
    return _checks


def test_user_script_type_checks_strictly(type_checks: TypeChecks) -> None:
    mypy_rc, mypy_out = type_checks.result("mypy")
    pyright_rc, pyright_out = type_checks.result("pyright")
    report = f"--- mypy --strict (exit {mypy_rc}):\n{mypy_out}\n--- pyright strict (exit "
    report += f"{pyright_rc}):\n{pyright_out}\n--- the script:\n{type_checks.script.read_text()}"
    assert mypy_rc == 0 and "Success: no issues found" in mypy_out, report
    assert pyright_rc == 0 and "0 errors" in pyright_out, report


def test_verifytypes_completeness(type_checks: TypeChecks) -> None:
    """What ``pyright --verifytypes`` says about the public API, from a user's side."""
    _, output = type_checks.result("pyright --verifytypes")
    try:
        completeness = json.loads(output)["typeCompleteness"]
    except (ValueError, KeyError):
        pytest.fail(f"pyright --verifytypes gave no report:\n{output}")
    assert Path(completeness["packageRootDirectory"]) == ROOT / "async_jobs"
    unknown = [
        f"{symbol['name']}: "
        + "; ".join(d["message"].replace("\n", " ") for d in symbol["diagnostics"][:2])
        for symbol in completeness["symbols"]
        if symbol["isExported"] and not symbol["isTypeKnown"]
    ]
    score = completeness["completenessScore"]
    assert score >= MIN_COMPLETENESS, f"{score:.1%} type completeness:\n" + "\n".join(unknown)
