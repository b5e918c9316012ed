"""How the ``async-jobs`` command shows jobs: rich tables and progress bars on a terminal,
one JSON object per line otherwise (or with ``--json``).

JSON lines (stable, for scripts): each object has ``event``. ``item`` (a listing), ``job``
(a get), ``update`` (a change seen while waiting), ``final`` (the terminal record) and
``summary`` (the demo's table) also carry ``kind``, ``id``, ``state`` (a JobState value),
``status`` (the API's raw status), ``progress`` (0-1 or null) and ``error``; all but
``summary`` carry ``job``, the record as the API sent it. ``stats`` closes a demo with its
figures (``jobs``, ``requests``, ``seconds``).

When the reader of standard output goes away (``async-jobs --json ... | head -1``), the output
stops writing: it points standard output at the null device, as the Python documentation
recommends for ``BrokenPipeError`` (so nothing fails again at exit), marks itself ``closed``
and calls ``on_closed`` (the CLI cancels the command there).

Library log lines never go to standard output in JSON mode (plain lines on standard error); on
a terminal they go through rich's logging handler on the console of the live display, so they
print above the progress bars.
"""

from __future__ import annotations

import abc
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any, TypeAlias

import msgspec

from ._api import JobKind
from ._poll import Job

__all__ = [
    "LOG_FORMAT",
    "JsonOutput",
    "Kind",
    "Output",
    "RichOutput",
    "job_record",
    "kind_name",
    "raw_status",
    "silence",
]

#: What the output methods take as a job's kind: its descriptor (whose ``label`` a terminal
#: shows), or just its name (shown as is).
Kind: TypeAlias = "JobKind[Any] | str"

#: The format of a library log line on standard error (JSON mode, or no rich).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def raw_status(job: Any) -> str | None:
    """The API's own status string of a job model (the field its ``status_field`` names)."""
    value = getattr(job, getattr(type(job), "status_field", "status"), None)
    return value if isinstance(value, str) else None


def kind_name(kind: Kind) -> str:
    """The stable name of ``kind`` (what JSON records carry)."""
    return kind if isinstance(kind, str) else kind.name


def job_record(event: str, kind: Kind, job: Any) -> dict[str, Any]:
    """The JSON-lines record of ``job`` for ``event``."""
    return {
        "event": event,
        "kind": kind_name(kind),
        "id": job.id,
        "state": job.job_state.value,
        "status": raw_status(job),
        "progress": job.progress,
        "error": job.error,
        "job": msgspec.to_builtins(job),
    }


def _label(job: Any) -> str:
    detail = getattr(job, "status_detail", None)
    status = raw_status(job) or "?"
    return f"{status} · {detail}" if isinstance(detail, str) and detail else status


#: Fields a listing shows, after the id, when its jobs have them: what a job is, for a user
#: picking one from a list (any model with such a field, whatever its API).
_DESCRIPTIVE = ("name", "type")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _percent(job: Any) -> str:
    return "" if job.progress is None else f"{job.progress:.0%}"


def _created(job: Any) -> Any:
    return getattr(job, getattr(type(job), "created_field", "created_at"), None)


def silence(stream: IO[str]) -> None:
    """Point ``stream``'s file descriptor at the null device (a stream without one is left
    alone): what the Python documentation recommends after a ``BrokenPipeError``, so the
    interpreter's last flush at exit does not fail again."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class Output(abc.ABC):
    """The renderer interface the CLI writes through. Each job comes with its :data:`Kind`:
    records carry the kind's name, a terminal shows its label, and the raw status is the
    field the model's ``status_field`` names, with its ``status_detail`` beside it."""

    #: True once the reader of the output went away (a closed pipe): nothing is written
    #: any more.
    closed: bool = False
    #: Called once when the output finds its reader gone (the CLI cancels the command).
    on_closed: Callable[[], None] | None = None

    def reader_gone(self, stream: IO[str]) -> None:
        """The reader of ``stream`` went away: silence it, mark the output closed and call
        :attr:`on_closed` (once)."""
        if self.closed:
            return
        self.closed = True
        silence(stream)
        if self.on_closed is not None:
            self.on_closed()

    @abc.abstractmethod
    def item(self, kind: Kind, job: Any) -> None:
        """One item of a listing."""

    def end_items(self) -> None:  # noqa: B027 - optional hook; most outputs stream items
        """The listing is complete."""

    @abc.abstractmethod
    def job(self, kind: Kind, job: Any) -> None:
        """One fetched job, in full."""

    @abc.abstractmethod
    def update(self, kind: Kind, job: Any) -> None:
        """A watched job changed."""

    @abc.abstractmethod
    def final(self, kind: Kind, job: Any) -> None:
        """A watched job reached its final state."""

    @abc.abstractmethod
    def summary(self, rows: list[dict[str, Any]]) -> None:
        """The closing table of a demo or multi-job wait."""

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Wraps a wait (live progress display on a terminal)."""
        yield

    @abc.abstractmethod
    def stats(self, **figures: Any) -> None:
        """Closing figures of a run (jobs, requests, seconds, ...)."""

    def result(self, event: str, message: str, **fields: Any) -> None:
        """What a command that shows no job did (``message``, one line), as ``event`` with
        ``fields`` in JSON lines."""
        print(message, flush=True)

    def error(self, message: str) -> None:
        """One line on standard error (none if its reader went away too)."""
        try:
            print(f"error: {message}", file=sys.stderr, flush=True)
        except BrokenPipeError:
            silence(sys.stderr)

    def log_handler(self) -> logging.Handler:
        """A new handler showing library log records: plain lines on standard error."""
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        return handler


class JsonOutput(Output):
    """One JSON object per line on ``stream``."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream or sys.stdout
        self._encoder = msgspec.json.Encoder()

    def _write(self, record: dict[str, Any]) -> None:
        if self.closed:
            return
        try:
            self._stream.write(self._encoder.encode(record).decode() + "\n")
            self._stream.flush()
        except BrokenPipeError:
            self.reader_gone(self._stream)

    def item(self, kind: Kind, job: Any) -> None:
        """One ``item`` line."""
        self._write(job_record("item", kind, job))

    def job(self, kind: Kind, job: Any) -> None:
        """One ``job`` line."""
        self._write(job_record("job", kind, job))

    def update(self, kind: Kind, job: Any) -> None:
        """One ``update`` line."""
        self._write(job_record("update", kind, job))

    def final(self, kind: Kind, job: Any) -> None:
        """One ``final`` line."""
        self._write(job_record("final", kind, job))

    def summary(self, rows: list[dict[str, Any]]) -> None:
        """One ``summary`` line per row."""
        for row in rows:
            self._write({"event": "summary", **row})

    def stats(self, **figures: Any) -> None:
        """One ``stats`` line."""
        self._write({"event": "stats", **figures})

    def result(self, event: str, message: str, **fields: Any) -> None:
        """One ``event`` line with ``fields`` (the message is for terminals)."""
        self._write({"event": event, **fields})


class RichOutput(Output):
    """Tables and live progress bars for a terminal (needs the ``cli`` extra: rich)."""

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = console or Console()
        self._progress = Progress(
            TextColumn("{task.fields[kind]:<11} {task.fields[short]:<8}"),
            SpinnerColumn(finished_text=" "),
            # A job that reports no progress (an operation, a Metafold job) has no total:
            # its bar pulses and it shows no percentage, only the spinner and the time.
            BarColumn(bar_width=20),
            TextColumn("{task.fields[percent]:>4}"),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=self.console,
            transient=False,
        )
        self._tasks: dict[tuple[str, str], Any] = {}
        #: Kind name -> label, of every kind this output has shown (a summary row names its
        #: kind by name).
        self._labels: dict[str, str] = {}
        self._items: list[Any] = []
        self._started = time.monotonic()

    def _short(self, kind: Kind) -> str:
        """The label a narrow terminal shows for ``kind`` (a name: the label of the kind of
        that name seen before, else the name)."""
        if isinstance(kind, str):
            return self._labels.get(kind, kind)
        self._labels[kind.name] = kind.label
        return kind.label

    def item(self, kind: Kind, job: Any) -> None:
        """A row of the listing table (printed by :meth:`end_items`)."""
        self._items.append(job)

    def end_items(self) -> None:
        """Print the table: id, then ``name`` and ``type`` when the jobs have them (a
        Metafold job's name and type, an operation's type), state, status, progress (when
        a running job reports one), created and error."""
        from rich.table import Table

        jobs, self._items = self._items, []
        if not jobs:
            self.console.print("(no items)")
            return
        extra = [
            field for field in _DESCRIPTIVE if any(_text(getattr(j, field, None)) for j in jobs)
        ]
        # Any finished job is at 100%: the column tells something when a running one has one.
        progress = any(job.progress is not None and not job.is_terminal for job in jobs)
        columns = ["id", *extra, "state", "status", *(["progress"] * progress), "created"]
        table = Table(*columns, "error")
        for job in jobs:
            cells = [job.id, *(_text(getattr(job, field, None)) for field in extra)]
            cells += [job.job_state.value, _label(job)]
            if progress:
                cells.append(_percent(job))
            cells += [str(_created(job) or ""), job.error or ""]
            table.add_row(*cells)
        self.console.print(table)

    def job(self, kind: Kind, job: Any) -> None:
        """A key/value view of one job."""
        from rich.table import Table

        table = Table(show_header=False, title=f"{kind_name(kind)} {job.id}")
        table.add_row("state", job.job_state.value)
        for key, value in msgspec.to_builtins(job).items():
            if value in (None, [], {}, ""):
                continue
            # A mapping of scalars (counts by status, say) reads best as a row per entry.
            entries = value.items() if isinstance(value, dict) else ()
            if entries and all(not isinstance(v, (dict, list)) for _, v in entries):
                for name, entry in entries:
                    table.add_row(f"{key}.{name}", str(entry))
                continue
            text = str(value)
            table.add_row(key, text if len(text) < 200 else text[:200] + "…")
        self.console.print(table)

    def _task(self, kind: Kind, job: Job) -> Any:
        key = (kind_name(kind), job.id)
        if key not in self._tasks:
            known = job.progress is not None or job.is_terminal
            self._tasks[key] = self._progress.add_task(
                _label(job),
                total=1.0 if known else None,
                kind=self._short(kind),
                short=job.id[:8],
                percent="",
            )
        return self._tasks[key]

    def update(self, kind: Kind, job: Any) -> None:
        """Move the job's progress bar: to its progress when it reports one, else a pulsing
        bar (no total) with the spinner and the time elapsed."""
        task = self._task(kind, job)
        if job.is_terminal:
            self._progress.update(task, total=1.0, completed=1.0, percent=_percent(job))
        elif job.progress is not None:
            self._progress.update(task, total=1.0, completed=job.progress, percent=_percent(job))
        self._progress.update(task, description=_label(job))

    def final(self, kind: Kind, job: Any) -> None:
        """Mark the job's bar with its outcome (a full bar; the spinner and clock stop)."""
        task = self._task(kind, job)
        colour = {"succeeded": "green", "failed": "red", "canceled": "yellow"}.get(
            job.job_state.value, "white"
        )
        outcome = f"[{colour}]{job.job_state.value}[/]"
        if job.error:
            outcome += f" ({job.error})"
        self._progress.update(
            task, total=1.0, completed=1.0, percent=_percent(job), description=outcome
        )

    @contextmanager
    def watching(self) -> Iterator[None]:
        """Show live bars while the wait runs."""
        with self._progress:
            yield

    def summary(self, rows: list[dict[str, Any]]) -> None:
        """The closing table."""
        from rich.table import Table

        table = Table("id", "kind", "final state", "duration", "error", title="summary")
        for row in rows:
            table.add_row(
                row["id"][:8],
                self._short(row["kind"]),
                row["state"],
                f"{row['duration']:.2f}s",
                row.get("error") or "",
            )
        self.console.print(table)

    def stats(self, **figures: Any) -> None:
        """One line of figures."""
        self.console.print(", ".join(f"{value} {name}" for name, value in figures.items()))

    def result(self, event: str, message: str, **fields: Any) -> None:
        """The message, on the console."""
        self.console.print(message, markup=False)

    def log_handler(self) -> logging.Handler:
        """A rich logging handler on this output's console: while the bars are live, each
        record prints above them instead of through them."""
        from rich.logging import RichHandler

        handler = RichHandler(console=self.console, show_path=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        return handler


class PlainOutput(JsonOutput):
    """Fallback for a terminal without rich installed: JSON lines too."""


def make_output(json_mode: bool, stream: IO[str] | None = None) -> Output:
    """JSON lines unless writing to a terminal with rich available."""
    stream = stream or sys.stdout
    if json_mode or not stream.isatty():
        return JsonOutput(stream)
    try:
        return RichOutput()
    except ImportError:
        return PlainOutput(stream)
