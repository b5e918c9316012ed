"""Ready-made populations of the fake server, shared by the demo and ``fake-server``."""

from __future__ import annotations

from dataclasses import dataclass

from ._server import FakeApiServer

__all__ = ["SCENARIOS", "ScenarioJob", "populate"]

SCENARIOS = ("demo", "empty")


@dataclass(frozen=True)
class ScenarioJob:
    """One job a scenario created: its kind (as in ``JobRef.kind``) and ids."""

    kind: str
    ids: tuple[str, ...]
    expected_state: str


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
        jobs.append(
            ScenarioJob("zoo.async_operation", (op.id,), "failed" if error else "succeeded")
        )
    return jobs


def populate(server: FakeApiServer, scenario: str) -> list[ScenarioJob]:
    """Create ``scenario``'s jobs on ``server`` and return them."""
    if scenario == "empty":
        return []
    if scenario == "demo":
        return _demo(server)
    raise ValueError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
