"""Ready-made populations of the fake server, shared by the demo and ``fake-server``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..metafold import METAFOLD_JOB
from ..models.zoo import CONVERSION_PHASES
from ..zoo import ASYNC_OPERATION, DATASET_CONVERSION
from ._apis import FakeApiServer

__all__ = ["DEMO_DATASET", "DEMO_PROJECT", "SCENARIOS", "ScenarioJob", "populate"]

SCENARIOS = ("demo", "empty")
#: The demo dataset's id: fixed, and a UUID as the real API's dataset ids are.
DEMO_DATASET = "f9919813-76e4-5c69-b665-16ccdf83591e"
DEMO_PROJECT = "demo-project"


@dataclass(frozen=True)
class ScenarioJob:
    """One job a scenario created: its kind (as in ``JobRef.kind``) and ids."""

    kind: str
    ids: tuple[str, ...]
    expected_state: str


def _long_running(server: FakeApiServer) -> list[ScenarioJob]:
    """Jobs that run for minutes (at speed 1), for a user to list, wait on or cancel while
    they run: the quick ones of the demo are over within seconds."""
    jobs: list[ScenarioJob] = []
    operations: list[tuple[str, list[tuple[str, float | None]], str | None]] = [
        ("text_to_cad", [("queued", 5.0), ("in_progress", 60.0), ("completed", None)], None),
        ("file_conversion", [("queued", 2.0), ("in_progress", 300.0), ("completed", None)], None),
        (
            "file_mass",
            [("uploaded", 10.0), ("in_progress", 120.0), ("failed", None)],
            "the model is not a closed solid",
        ),
        ("file_volume", [("in_progress", 3600.0), ("completed", None)], None),
    ]
    for kind, steps, error in operations:
        op = server.zoo.add_operation(kind, steps, error=error)
        jobs.append(ScenarioJob(ASYNC_OPERATION.name, (op.id,), "failed" if error else "succeeded"))
    dataset = server.conversions.add_dataset(DEMO_DATASET)
    for step, failing in ((10.0, False), (30.0, False), (15.0, True)):
        timeline: list[tuple[str, float | None] | tuple[str, str, float | None]]
        timeline = [("queued", step), *((phase, step) for phase in _WALK)]
        error = None
        if failing:
            timeline = [*timeline[:5], ("error_internal", None)]
            error = "the converter crashed"
        else:
            timeline.append(("success", None))
        conversion = server.conversions.add_conversion(dataset, timeline, error=error)
        expected = "failed" if failing else "succeeded"
        jobs.append(ScenarioJob(DATASET_CONVERSION.name, (dataset, conversion.id), expected))
    for name, kind, steps, error in (
        ("long-render", "render", [("pending", 5.0), ("started", 45.0), ("success", None)], None),
        (
            "big-lattice",
            "sample_lattice",
            [("pending", 20.0), ("started", 120.0), ("failure", None)],
            "out of memory",
        ),
    ):
        job = server.metafold.add_job(DEMO_PROJECT, kind, steps, name=name, error=error)
        jobs.append(
            ScenarioJob(
                METAFOLD_JOB.name, (DEMO_PROJECT, job.id), "failed" if error else "succeeded"
            )
        )
    return jobs


def _demo(server: FakeApiServer) -> list[ScenarioJob]:
    jobs: list[ScenarioJob] = []
    operations = [
        ("file_conversion", [("queued", 0.4), ("in_progress", 1.2), ("completed", None)], None),
        ("file_volume", [("queued", 0.2), ("in_progress", 0.8), ("completed", None)], None),
        ("file_mass", [("uploaded", 0.6), ("in_progress", 1.5), ("completed", None)], None),
        (
            "file_surface_area",
            [("queued", 0.3), ("in_progress", 0.9), ("failed", None)],
            "mesh is not watertight",
        ),
        ("text_to_cad", [("queued", 0.5), ("in_progress", 2.0), ("completed", None)], None),
    ]
    for kind, steps, error in operations:
        op = server.zoo.add_operation(kind, steps, error=error)
        jobs.append(ScenarioJob(ASYNC_OPERATION.name, (op.id,), "failed" if error else "succeeded"))
    jobs += _demo_conversions(server)
    jobs += _demo_workflow(server)
    return jobs


#: The phases a conversion walks between ``queued`` and ``completed`` (no manual override).
_WALK = [p for p in CONVERSION_PHASES if p not in ("queued", "completed", "manual_kcl_override")]


def _demo_conversions(server: FakeApiServer) -> list[ScenarioJob]:
    """~20 conversions walking the phases at different speeds; one fails, one is retried."""
    dataset = server.conversions.add_dataset(DEMO_DATASET)
    jobs = []
    for index in range(20):
        step = 0.08 + 0.015 * index
        timeline: list[tuple[str, float | None] | tuple[str, str, float | None]]
        timeline = [("queued", 0.1 + 0.05 * index), *((phase, step) for phase in _WALK)]
        expected = "succeeded"
        error = None
        if index == 7:  # fails half way
            timeline = [*timeline[:6], ("error_geometry_mismatch", None)]
            expected, error = "failed", "re-imported geometry differs from the source"
        elif index == 12:  # dropped by a worker and retried from the start
            timeline = [*timeline[:5], ("queued", "queued", 0.4), *timeline[1:]]
            timeline.append(("success", None))
        else:
            timeline.append(("success", None))
        conversion = server.conversions.add_conversion(dataset, timeline, error=error)
        jobs.append(ScenarioJob(DATASET_CONVERSION.name, (dataset, conversion.id), expected))
    return jobs


def _demo_workflow(server: FakeApiServer) -> list[ScenarioJob]:
    """A Metafold workflow of six jobs with ``needs``."""
    specs: list[dict[str, Any]] = [
        {"name": "import-mesh", "type": "import/mesh", "needs": []},
        {"name": "voxelize", "type": "implicit/from-mesh", "needs": ["import-mesh"]},
        {"name": "sample-lattice", "type": "sample_lattice", "needs": ["import-mesh"]},
        {
            "name": "evaluate-graph",
            "type": "evaluate_graph",
            "needs": ["voxelize", "sample-lattice"],
        },
        {"name": "export-stl", "type": "export_triangle_mesh", "needs": ["evaluate-graph"]},
        {"name": "render-preview", "type": "render", "needs": ["evaluate-graph"]},
    ]
    for index, spec in enumerate(specs):
        spec["timeline"] = [("pending", 0.2), ("started", 0.4 + 0.1 * index), ("success", None)]
    workflow = server.metafold.add_workflow(DEMO_PROJECT, specs)
    return [
        ScenarioJob(METAFOLD_JOB.name, (DEMO_PROJECT, job_id), "succeeded")
        for job_id in workflow.jobs
    ]


def populate(
    server: FakeApiServer, scenario: str, *, long_running: bool = True
) -> list[ScenarioJob]:
    """Create ``scenario``'s jobs on ``server`` and return them. The demo's jobs end within
    seconds; with ``long_running``, some more run for minutes (one for an hour), at speed 1."""
    if scenario == "empty":
        return []
    if scenario == "demo":
        return _demo(server) + (_long_running(server) if long_running else [])
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
