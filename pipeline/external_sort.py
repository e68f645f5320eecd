"""Sorted iteration over more records than a launcher should hold: runs sorted in memory, spilled
to a local folder, merged on reading.

The launcher sorts every listed file by key (units are runs of consecutive keys) and every
committed key of a resumed store; at 10^6-10^8 files neither list may live in memory. A
`SortedSpill` keeps at most `chunk` records while adding and about `READ_BATCH` per spilled
run while reading. Records are tuples of str/int (compared as tuples); the standard library only.
"""
from __future__ import annotations

import heapq
import os
import pickle
from typing import Any, Iterable, Iterator

CHUNK = 100_000  # records sorted in memory before a run is spilled: ~30 MB of (key, path, size)
READ_BATCH = 256  # records unpickled at once per spilled run while merging
# Runs merged at once. 10^8 files make 1,000 runs, and a resume merges two spills together: more
# open files than a default limit allows (1,024 on Linux, 256 on macOS), so runs are merged in rounds.
FAN_IN = 64


class SortedSpill:
    """Add records in any order; iterate them sorted (as often as wanted, once adding is done)."""

    def __init__(self, folder: str, name: str, chunk: int = CHUNK):
        self._folder, self._name, self._chunk = folder, name, chunk
        self._buffer: list[tuple[Any, ...]] = []
        self._runs: list[str] = []
        self._written = 0
        self.count = 0

    def add(self, record: tuple[Any, ...]) -> None:
        self._buffer.append(record)
        self.count += 1
        if len(self._buffer) >= self._chunk:
            self._spill()

    def _write_run(self, records: Iterable[tuple[Any, ...]]) -> str:
        path = os.path.join(self._folder, f"{self._name}-{self._written:06d}.pickle")
        self._written += 1
        with open(path, "wb") as handle:
            batch = []
            for record in records:
                batch.append(record)
                if len(batch) == READ_BATCH:
                    pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)
                    batch = []
            if batch:
                pickle.dump(batch, handle, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    def _spill(self) -> None:
        self._buffer.sort()
        self._runs.append(self._write_run(self._buffer))
        self._buffer = []

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if not self._runs:  # everything fits: no file at all
            self._buffer.sort()
            return iter(self._buffer)
        if self._buffer:
            self._spill()
        while len(self._runs) > FAN_IN:  # merge rounds: at most FAN_IN files open at once
            merged = [self._write_run(heapq.merge(*(_read_run(path) for path in self._runs[start:start + FAN_IN])))
                      for start in range(0, len(self._runs), FAN_IN)]
            for path in self._runs:
                os.remove(path)
            self._runs = merged
        return heapq.merge(*(_read_run(path) for path in self._runs))


def _read_run(path: str) -> Iterator[tuple[Any, ...]]:
    with open(path, "rb") as handle:
        while True:
            try:
                batch = pickle.load(handle)
            except EOFError:
                return
            yield from batch
