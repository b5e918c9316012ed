"""The Metafold fake's lifecycle engine: projects, jobs walking scripted timelines on the
server's clock, workflows whose jobs wait for the jobs they need (and are canceled when one of
those fails), and what state each is in at any fake instant."""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from ..metafold import dependency_order
from ..models._state import JobState
from ..models.metafold import METAFOLD_STATES
from ._clock import FakeClock
from ._helpers import CreationTimes, walk
from ._helpers import Timeline as Walk
from ._metafold_definition import DefinitionError, parse_definition

__all__ = [
    "DEFAULT_JOB_TIMELINE",
    "FakeMetafoldJob",
    "FakeMetafoldWorkflow",
    "MetafoldLifecycle",
    "Steps",
]

Timeline = Sequence[tuple[str, float | None]]


class _Node(NamedTuple):
    """A workflow job's name and what it needs, as :func:`dependency_order` sorts them."""

    id: str
    needs: Sequence[str]


#: pending 50 ms, started 100 ms, then success.
DEFAULT_JOB_TIMELINE: Timeline = (("pending", 0.05), ("started", 0.1), ("success", None))
_NEVER = math.inf
#: A job's resolved walk (needs and overrides applied).
Steps = Walk[str]


def _state(name: str) -> JobState:
    return METAFOLD_STATES.get(name, JobState.UNKNOWN)


@dataclass
class FakeMetafoldJob:
    """One scripted job: it sits in ``timeline[0]`` for its duration and until every job it
    ``needs`` succeeded, then walks the rest of the timeline."""

    id: str
    project_id: str
    type: str
    name: str | None
    created: float
    created_at: datetime
    timeline: list[tuple[str, float | None]]
    error: str | None = None
    needs: list[str] = field(default_factory=list)
    workflow_id: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    overrides: list[tuple[float, str, str | None]] = field(default_factory=list)


@dataclass
class FakeMetafoldWorkflow:
    """A workflow: its jobs (ids, in definition order), its YAML definition and when it was
    canceled (fake seconds; None: it was not)."""

    id: str
    project_id: str
    created: float
    created_at: datetime
    jobs: list[str]
    definition: str
    canceled: float | None = None


@dataclass
class _Project:
    jobs: dict[str, FakeMetafoldJob] = field(default_factory=dict)
    workflows: dict[str, FakeMetafoldWorkflow] = field(default_factory=dict)


@dataclass(frozen=True)
class _Seen:
    state: str
    started: float | None
    finished: float | None
    error: str | None


class MetafoldLifecycle:
    """Projects of scripted jobs and workflows, and their state at any fake instant."""

    clock: FakeClock

    def __init__(self) -> None:
        self.projects: dict[str, _Project] = {}
        self._creations = CreationTimes()
        #: How each job of a workflow created through the API (:meth:`create_workflow`) walks:
        #: its first state until every job it needs succeeded, then the rest.
        self.workflow_job_timeline: Timeline = DEFAULT_JOB_TIMELINE
        #: Timelines of such jobs by job name, instead of :attr:`workflow_job_timeline`.
        self.workflow_job_timelines: dict[str, Timeline] = {}
        #: Job names that fail in every workflow created through the API, with their error:
        #: the job ends in ``failure`` instead of its timeline's final state (or once its
        #: last step is over, if that one has a duration).
        self.failing_jobs: dict[str, str] = {}

    # -- scripting --------------------------------------------------------------------------

    def add_project(self, project_id: str) -> None:
        """Create an empty project (``add_job`` and ``add_workflow`` create theirs)."""
        self.projects.setdefault(project_id, _Project())

    def _created(self) -> tuple[float, datetime]:
        return self._creations.next(self.clock)

    def add_job(
        self,
        project_id: str,
        type: str = "implicit/from-mesh",
        timeline: Timeline = DEFAULT_JOB_TIMELINE,
        *,
        name: str | None = None,
        error: str | None = None,
        needs: Sequence[str] = (),
        id: str | None = None,
        params: Mapping[str, Any] | None = None,
        workflow_id: str | None = None,
    ) -> FakeMetafoldJob:
        """Create a job that walks ``timeline``: (state, seconds in it) pairs, the last one's
        duration None (it stays there). ``needs`` are ids of jobs in the same project; the
        job leaves its first state only once they all succeeded. A ``failure`` reports
        ``error``."""
        if not timeline:
            raise ValueError("timeline must have at least one step")
        self.add_project(project_id)
        project = self.projects[project_id]
        for need in needs:
            if need not in project.jobs:
                raise ValueError(f"needs names an unknown job {need!r}")
        created, created_at = self._created()
        job = FakeMetafoldJob(
            id=id or uuid.uuid4().hex,
            project_id=project_id,
            type=type,
            name=name,
            created=created,
            created_at=created_at,
            timeline=list(timeline),
            error=error,
            needs=list(needs),
            workflow_id=workflow_id,
            params=dict(params) if params is not None else {"resolution": "256"},
        )
        project.jobs[job.id] = job
        return job

    def add_workflow(
        self,
        project_id: str,
        jobs: Sequence[Mapping[str, Any]],
        *,
        id: str | None = None,
        definition: str | None = None,
    ) -> FakeMetafoldWorkflow:
        """Create a workflow and its jobs. Each job is a mapping of :meth:`add_job` keywords
        (``name``, ``type``, ``timeline``, ``error``, ``params``) whose ``needs`` are the
        *names* of other jobs of the workflow, as in a workflow definition. ``definition``
        is the YAML it reports (default: one written from ``jobs``). ValueError for a
        duplicate name, a need naming no job of the workflow, or a cycle."""
        workflow_id = id or uuid.uuid4().hex
        names = [str(spec.get("name") or f"job-{index}") for index, spec in enumerate(jobs)]
        if len(set(names)) != len(names):
            raise ValueError("job names must be unique within a workflow")
        ids = {name: uuid.uuid4().hex for name in names}
        specs = dict(zip(names, jobs, strict=True))
        needs = {name: tuple(str(need) for need in specs[name].get("needs", ())) for name in names}
        for name in names:
            for need in needs[name]:
                if need not in ids:
                    raise ValueError(f"job {name!r} needs an unknown job {need!r}")
        # Create each job after the jobs it needs, in the library's own dependency order.
        order = [job.id for job in dependency_order([_Node(name, needs[name]) for name in names])]
        placed: set[str] = set()
        for name in order:
            if not placed.issuperset(needs[name]):
                raise ValueError("the workflow's needs form a cycle")
            placed.add(name)
        for name in order:
            spec, spec_needs = specs[name], needs[name]
            self.add_job(
                project_id,
                spec.get("type", "implicit/from-mesh"),
                spec.get("timeline", DEFAULT_JOB_TIMELINE),
                name=name,
                error=spec.get("error"),
                needs=[ids[need] for need in spec_needs],
                id=ids[name],
                params=spec.get("params"),
                workflow_id=workflow_id,
            )
        at, at_wall = self._created()
        workflow = FakeMetafoldWorkflow(
            id=workflow_id,
            project_id=project_id,
            created=at,
            created_at=at_wall,
            jobs=[ids[name] for name in names],
            definition=_definition(names, jobs) if definition is None else definition,
        )
        self.projects[project_id].workflows[workflow_id] = workflow
        return workflow

    def create_workflow(
        self,
        project_id: str,
        definition: str,
        *,
        assets: Mapping[str, str] | None = None,
        parameters: Mapping[str, str] | None = None,
    ) -> FakeMetafoldWorkflow:
        """Dispatch a workflow from its YAML ``definition``, as ``POST
        /projects/{p}/workflows`` does: one job per definition job (its ``needs`` the ids of
        the jobs it names), walking :attr:`workflow_job_timeline` (or its entry in
        :attr:`workflow_job_timelines`) once what it needs succeeded, failing if it is one
        of :attr:`failing_jobs`. Raises ``DefinitionError`` (a ValueError) for a definition
        the server refuses."""
        specs: list[dict[str, Any]] = []
        for job in parse_definition(definition, assets, parameters):
            timeline = list(self.workflow_job_timelines.get(job.name, self.workflow_job_timeline))
            error = self.failing_jobs.get(job.name)
            if error is not None:  # fail instead of ending as scripted (or after the last step)
                ended = timeline[-1][1] is None
                timeline = [*(timeline[:-1] if ended else timeline), ("failure", None)]
            specs.append(
                {
                    "name": job.name,
                    "type": job.type,
                    "needs": job.needs,
                    "timeline": timeline,
                    "error": error,
                    "params": job.parameters,
                }
            )
        try:
            return self.add_workflow(project_id, specs, definition=definition)
        except ValueError as exc:
            raise DefinitionError(f"Invalid workflow definition: {exc}") from None

    def set_state(
        self, project_id: str, job_id: str, state: str, *, error: str | None = None
    ) -> None:
        """Move a job to ``state`` now, dropping the rest of its timeline."""
        job = self.projects[project_id].jobs[job_id]
        job.overrides.append((self.clock.now(), state, error))

    def cancel_workflow(self, project_id: str, workflow_id: str) -> bool:
        """Cancel the workflow now if it has not finished: it and every job of it that has not
        ended become ``canceled``. False (and nothing changes) if it had finished."""
        project = self.projects[project_id]
        workflow = project.workflows[workflow_id]
        now = self.clock.now()
        if self.workflow_moment(project_id, workflow_id, now, {}).finished is not None:
            return False
        for job_id in workflow.jobs:
            if not _state(self.state(project_id, job_id)).is_terminal:
                self.set_state(project_id, job_id, "canceled")
        workflow.canceled = now
        return True

    def state(self, project_id: str, job_id: str) -> str:
        """A job's state right now (the server's truth)."""
        return self._seen(self.projects[project_id], job_id, self.clock.now(), {}).state

    # -- lifecycle --------------------------------------------------------------------------

    def workflow_moment(
        self, project_id: str, workflow_id: str, now: float, memo: dict[str, Steps]
    ) -> _Seen:
        """The workflow at fake time ``now``, as its jobs make it: ``pending`` until one of
        them leaves its first state, then ``started``; once all ended, ``failure`` if one
        failed, else ``canceled`` if one was, else ``success``; ``canceled`` from the moment
        it was canceled. Started and finished are its first job's start and last job's end."""
        project = self.projects[project_id]
        workflow = project.workflows[workflow_id]
        seen = [self._seen(project, job_id, now, memo) for job_id in workflow.jobs]
        states = [_state(one.state) for one in seen]
        started_at = [one.started for one in seen if one.started is not None]
        started = min(started_at) if started_at else None
        if workflow.canceled is not None and workflow.canceled <= now:
            return _Seen("canceled", started, workflow.canceled, None)
        if seen and all(state.is_terminal for state in states):
            if JobState.FAILED in states:
                state = "failure"
            elif JobState.CANCELED in states:
                state = "canceled"
            else:
                state = "success"
            return _Seen(state, started, max(one.finished or now for one in seen), None)
        state = "started" if any(s is not JobState.PENDING for s in states) else "pending"
        return _Seen(state, started, None, None)

    def _steps(self, project: _Project, job_id: str, memo: dict[str, Steps]) -> Steps:
        """When the job enters each state: (fake time, state), resolved against its needs."""
        if job_id in memo:
            return memo[job_id]
        memo[job_id] = Walk([(0.0, "pending")])  # a placeholder that breaks cycles
        job = project.jobs[job_id]
        first, first_for = job.timeline[0]
        ready = _NEVER if first_for is None else job.created + first_for
        blocked: tuple[float, str] | None = None
        for need in job.needs:
            ended = next(
                (
                    (at, s)
                    for at, s in self._steps(project, need, memo).steps
                    if _state(s).is_terminal
                ),
                None,
            )
            if ended is None:
                ready = _NEVER
            elif _state(ended[1]) is JobState.SUCCEEDED:
                ready = max(ready, ended[0])
            elif blocked is None or ended[0] < blocked[0]:
                blocked = (ended[0], need)
        steps: Steps = Walk([(job.created, first)])
        if blocked is not None:
            steps.steps.append((max(job.created, blocked[0]), "canceled"))
        elif ready != _NEVER:
            steps.steps += walk(ready, job.timeline[1:])
        for at, state, _ in job.overrides:
            steps.goto(at, state)
        memo[job_id] = steps
        return steps

    def _seen(self, project: _Project, job_id: str, now: float, memo: dict[str, Steps]) -> _Seen:
        job = project.jobs[job_id]
        resolved = self._steps(project, job_id, memo)
        steps = [step for step in resolved.steps if step[0] <= now]
        state = resolved.state(now)
        started = finished = None
        for at, name in steps:
            mapped = _state(name)
            if started is None and mapped is JobState.RUNNING:
                started = at
            if mapped.is_terminal:
                finished = at
                if started is None and mapped is not JobState.CANCELED:
                    started = at  # it ran, however briefly; a canceled job may never have
                break
        error: str | None = None
        forced = [err for at, name, err in job.overrides if at <= now and name == state and err]
        if forced:
            error = forced[-1]
        elif _state(state) is JobState.FAILED:
            error = job.error
        elif _state(state) is JobState.CANCELED and not job.overrides:
            upstream = [
                need
                for need in job.needs
                if _state(self._seen(project, need, now, memo).state)
                in (JobState.FAILED, JobState.CANCELED)
            ]
            if upstream:
                error = f"canceled: upstream job {upstream[0]} did not succeed"
        return _Seen(state, started, finished, error)


def _definition(names: Sequence[str], jobs: Sequence[Mapping[str, Any]]) -> str:
    """A workflow definition in the YAML shape Metafold documents."""
    lines = ["---", "jobs:"]
    for name, spec in zip(names, jobs, strict=True):
        lines.append(f"  {name}:")
        lines.append(f"    type: {spec.get('type', 'implicit/from-mesh')}")
        needs = [str(need) for need in spec.get("needs", ())]
        if needs:
            lines.append(f"    needs: [{', '.join(needs)}]")
    return "\n".join(lines) + "\n"
