"""How a model call fails, and what the user is told: the one place that decides whether a
failure is the data's (an error row), the batch size's (try again smaller) or the model's (the
job stops with one sentence).

- Out of memory (TensorFlow's `ResourceExhaustedError`, JAX/XLA `RESOURCE_EXHAUSTED`, torch's
  CUDA `OutOfMemoryError`; `is_out_of_memory`): the caller halves its batch and tries again
  (`pipeline.model.runtime.FeatureModel.infer`).
- Any other failure of a batch: `isolate_failures` bisects it until the inputs that fail alone
  are found; they become `infer` error rows and the rest get their vectors. When no input of a
  batch of several succeeds, the failure is the model's or the machine's, not the data's: it is
  raised (the bundle fails and Beam retries it), never turned into error rows for everyone.
- A model that cannot be built is never data: `model_failure` says why in one sentence, and
  `as_model_load_error` raises it as `ModelLoadError`, from the launcher's check
  (`pipeline.model.preflight`) and from a worker (`pipeline.model.runtime.load_feature_model`) alike.
"""
from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Callable, Iterator, Sequence, TypeVar

from pipeline.logs import JobError
from pipeline.model.weight_files import NoClassifier, WeightsDoNotFit

if TYPE_CHECKING:
    from pipeline.model.spec import ModelSpec

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


class ModelLoadError(JobError):
    """The run's model cannot be built; the message is the one sentence the user sees."""


_URL = re.compile(r"https?://[^\s'\"]+?(?=[:;,]?\s|[:;,]?$|['\"])")  # the download's address in Keras's error


def _first_reason(text: str) -> str:
    """The first attempt's reason from applications' "does not fit" error (a Keras 3 file), on one line."""
    reasons = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.strip().startswith("as an ")]
    reason = " ".join((reasons[0] if reasons else text).split())
    return reason.split(" List of objects", 1)[0][:300]  # Keras then lists every object: the first says enough


def model_failure(spec: ModelSpec, exc: BaseException) -> str:
    """The one sentence for an exception raised while building `spec`'s model."""
    text = str(exc)
    flat = " ".join(text.split())
    if spec.weights == "imagenet":
        url = _URL.search(flat)
        if url is not None or "fetch failure" in flat.lower():
            where = url.group(0) if url else "Keras's download server"
            reason = flat.split(" -- ", 1)[-1][:200] if " -- " in flat else type(exc).__name__
            return (f"weights imagenet for {spec.backbone} could not be downloaded from {where} ({reason}); "
                    f"on a machine without internet pass --weights FILE with a local copy of that file, "
                    f"or --weights none for random weights")
    if isinstance(exc, NoClassifier):
        return text
    if spec.weights_file is not None and isinstance(exc, (ValueError, OSError)):
        reason = exc.reason if isinstance(exc, WeightsDoNotFit) else _first_reason(text)
        return (f"weights {spec.weights!r} do not fit {spec.backbone} at {spec.input_size[0]}x{spec.input_size[1]} "
                f"({reason}); give a weights file saved from {spec.backbone}, "
                f"or --weights imagenet or none")
    return f"{spec.backbone} cannot be built ({type(exc).__name__}: {flat[:300]})"


@contextlib.contextmanager
def as_model_load_error(spec: ModelSpec) -> Iterator[None]:
    """Around building `spec`'s model: a failure becomes ModelLoadError with `model_failure`'s
    sentence on top of the original error. ImportError (a missing extra) and MemoryError (the
    host) pass as they are: they say what is wrong themselves."""
    try:
        yield
    except (ImportError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - Keras raises bare Exception for a failed download
        raise ModelLoadError(model_failure(spec, exc)) from exc
