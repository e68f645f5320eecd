"""A committed unit's journal entry (`UnitEntry`) and the error rows it counts (`ErrorCounts`): built
here, read everywhere a run looks at what is committed (planning, the duplicate-key check, the
manifest, --max-error-rate).

On disk an entry is `_featurize/units/UNIT.json` (pipeline.job.journal), a flat JSON object whose
names have not changed since the first stores, so a store written by any earlier version resumes:

    unit, layout, source, inputs, rows, worker, files {features, errors, keys}, committed_at
    started_at   since this version: when the committing attempt started (with committed_at, a unit's time)
    errors, errors_by_stage {read, decode, infer, write}, errors_by_type {"stage Type": n},
    error_examples {"stage Type": "key: message"}
    batch_size   only when a worker ran out of accelerator memory and halved it
    retry        only when some input could not be read (a --resume redoes the unit)
    keys, rejected   files units only: every key the unit holds, and its duplicate-key error rows
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable

from pipeline.elements import STAGES, ErrorRecord

_EXAMPLE_CHARS = 160


@dataclass
class ErrorCounts:
    """Error rows counted by stage and by kind ("decode UnidentifiedImageError"), with the first example
    of each kind: one unit's, one worker's or a whole run's."""
    by_stage: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    by_kind: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.by_stage.values())

    def add(self, error: ErrorRecord) -> None:
        self.by_stage[error.stage] = self.by_stage.get(error.stage, 0) + 1
        kind = f"{error.stage} {error.error_type}"
        self.by_kind[kind] += 1
        self.examples.setdefault(kind, f"{error.key}: {' '.join(error.message.split())[:_EXAMPLE_CHARS]}")

    def merge(self, other: "ErrorCounts") -> None:
        for stage, count in other.by_stage.items():
            self.by_stage[stage] = self.by_stage.get(stage, 0) + count
        self.by_kind.update(other.by_kind)
        for kind, example in other.examples.items():
            self.examples.setdefault(kind, example)

    def most_common(self, top: int = 5) -> list[dict[str, Any]]:
        """[{"error": "decode UnidentifiedImageError", "count": 312, "example": "key: message"}, ...]: the
        manifest's `errors_top`; ties in name order, so the list does not depend on the order of units."""
        ranked = sorted(self.by_kind.items(), key=lambda item: (-item[1], item[0]))[:top]
        return [{"error": kind, "count": count, "example": self.examples.get(kind, "")} for kind, count in ranked]

    @classmethod
    def of(cls, entries: Iterable["UnitEntry"]) -> "ErrorCounts":
        counts = cls()
        for entry in entries:
            counts.merge(entry.errors)
        return counts


@dataclass(frozen=True)
class UnitEntry:
    """What the journal holds of one committed unit."""
    unit: str
    layout: str
    source: str
    inputs: int
    rows: int = 0
    errors: ErrorCounts = field(default_factory=ErrorCounts)
    files: dict[str, str] = field(default_factory=dict)  # role (features, errors, keys) -> path in the store
    worker: str | None = None  # host:pid: how a cluster run's spread shows in the journal
    batch_size: int | None = None  # set when halved after running out of memory
    retry: bool = False  # some input could not be read: a --resume redoes the unit
    keys: tuple[str, ...] | None = None  # files units: every key the unit holds
    rejected: tuple[tuple[str, str], ...] | None = None  # files units: (key, uri) of its duplicate-key rows
    committed_at: str | None = None
    started_at: str | None = None

    @property
    def is_final(self) -> bool:
        """A committed entry that no later attempt may replace."""
        return not self.retry

    def summary(self) -> "UnitEntry":
        """Without its key lists (a files unit names every key it holds): what the launcher and the manifest
        step keep of each of 10^5 entries."""
        return replace(self, keys=None, rejected=None)

    def check_counts(self) -> None:
        """Every input is a feature row or an error row."""
        if self.inputs != self.rows + self.errors.total:
            raise RuntimeError(f"unit {self.unit} lost track of inputs: {self.inputs} read but {self.rows} rows + "
                               f"{self.errors.total} error rows")

    def to_json(self) -> dict[str, Any]:
        document = {"unit": self.unit, "layout": self.layout, "source": self.source, "inputs": self.inputs,
                    "rows": self.rows, "errors": self.errors.total, "errors_by_stage": dict(self.errors.by_stage),
                    "errors_by_type": dict(self.errors.by_kind), "error_examples": dict(self.errors.examples),
                    "files": dict(self.files)}
        optional = {"worker": self.worker, "batch_size": self.batch_size, "retry": self.retry or None,
                    "committed_at": self.committed_at, "started_at": self.started_at,
                    "keys": None if self.keys is None else list(self.keys),
                    "rejected": None if self.rejected is None else [list(pair) for pair in self.rejected]}
        document.update((name, value) for name, value in optional.items() if value is not None)
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "UnitEntry":
        keys, rejected = document.get("keys"), document.get("rejected")
        return cls(
            unit=document["unit"], layout=document.get("layout", "tar"),  # the first stores had tar units only
            source=document.get("source", ""), inputs=document["inputs"], rows=document.get("rows", 0),
            errors=ErrorCounts(dict(document.get("errors_by_stage") or dict.fromkeys(STAGES, 0)),
                               Counter(document.get("errors_by_type", {})), dict(document.get("error_examples", {}))),
            files=dict(document.get("files", {})), worker=document.get("worker"),
            batch_size=document.get("batch_size"), retry=bool(document.get("retry")),
            keys=None if keys is None else tuple(keys),
            rejected=None if rejected is None else tuple((key, uri) for key, uri in rejected),
            committed_at=document.get("committed_at"), started_at=document.get("started_at"))
