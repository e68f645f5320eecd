"""How a model call on a batch survives: out-of-memory back-off, and poison inputs isolated.

Out of memory (TensorFlow's `ResourceExhaustedError`, JAX/XLA `RESOURCE_EXHAUSTED`, torch's CUDA
`OutOfMemoryError`): the caller halves its batch and tries again (`FeatureModel.infer`).

Any other failure of a batch: `isolate_failures` bisects it until the inputs that fail alone
are found; they become `infer` error rows and the rest get their vectors. When no input of a
batch of several succeeds, the failure is the model's or the machine's, not the data's: it is
raised (the bundle fails and Beam retries it), never turned into error rows for everyone.
"""
from __future__ import annotations

from typing import Callable, Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

_OOM_TYPES = ("ResourceExhaustedError", "OutOfMemoryError")  # TensorFlow, torch (class names: no imports)


def is_out_of_memory(exc: BaseException) -> bool:
    """An accelerator (or XLA) out-of-memory error of any backend; host MemoryError is not one."""
    if type(exc).__name__ in _OOM_TYPES:
        return True
    return "RESOURCE_EXHAUSTED" in str(exc) or "CUDA out of memory" in str(exc)


def isolate_failures(run: Callable[[Sequence[Item]], list[Result]], batch: Sequence[Item]
                     ) -> tuple[list[Result | None], list[tuple[int, Exception]]]:
    """`run(batch)`, bisected on failure: (a result per input, None where it failed; the failed
    inputs' positions with their exceptions). Out-of-memory errors are never bisected: they
    raise. When every input of a batch of several fails alone, the first failure raises."""
    results: list[Result | None] = [None] * len(batch)
    failures: list[tuple[int, Exception]] = []

    def attempt(start: int, stop: int) -> None:
        try:
            outputs = run(batch[start:stop])
        except Exception as exc:  # noqa: BLE001 - bisected below; raised when not one input's fault
            if is_out_of_memory(exc):
                raise
            if stop - start == 1:
                failures.append((start, exc))
                return
            middle = (start + stop) // 2
            attempt(start, middle)
            attempt(middle, stop)
            return
        results[start:stop] = outputs

    attempt(0, len(batch))
    if len(batch) > 1 and len(failures) == len(batch):
        raise failures[0][1]
    return results, failures
