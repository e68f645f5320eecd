"""Poison inputs isolated by bisection; out-of-memory errors recognised on every backend; a model
that cannot be built is one sentence. (Whole runs with a poisoned or out-of-memory model:
tests/scenarios/test_model_failures.py.)"""
import pytest

from pipeline.model.failures import ModelLoadError, as_model_load_error, is_out_of_memory, isolate_failures
from pipeline.model.spec import ModelSpec
from tests.helpers.poison import Poisoned


def model_failing_on(bad: set, calls: list):
    def run(part):
        calls.append(len(part))
        if bad & set(part):
            raise Poisoned(f"cannot embed {sorted(bad & set(part))}")
        return [item * 10 for item in part]
    return run


def test_only_the_inputs_that_fail_alone_become_failures():
    calls = []
    results, failures = isolate_failures(model_failing_on({3, 17}, calls), list(range(32)))
    assert [position for position, _ in failures] == [3, 17]
    assert all(isinstance(exc, Poisoned) for _, exc in failures)
    assert results == [None if i in (3, 17) else i * 10 for i in range(32)]
    assert len(calls) <= 2 * 2 * 5 + 1  # two bisection paths of depth log2(32)


def test_a_batch_that_works_is_one_call():
    calls = []
    assert isolate_failures(model_failing_on(set(), calls), [1, 2, 3]) == ([10, 20, 30], [])
    assert calls == [3]


def test_a_lone_poison_input_is_a_failure_but_a_whole_failing_batch_raises():
    results, failures = isolate_failures(model_failing_on({5}, []), [5])
    assert results == [None] and [position for position, _ in failures] == [0]
    with pytest.raises(Poisoned):  # no input of several works: the model is broken, not the data
        isolate_failures(model_failing_on({1, 2, 3}, []), [1, 2, 3])


def test_out_of_memory_is_never_bisected():
    import tensorflow as tf

    calls = []

    def run(part):
        calls.append(len(part))
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    with pytest.raises(tf.errors.ResourceExhaustedError):
        isolate_failures(run, list(range(8)))
    assert calls == [8]


@pytest.mark.parametrize("exc, expected", [
    (RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB."), True),  # JAX / XLA
    (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),  # torch before OutOfMemoryError
    (type("OutOfMemoryError", (RuntimeError,), {})("CUDA error"), True),  # torch.cuda.OutOfMemoryError
    (MemoryError(), False),  # the host: not the accelerator's batch size
    (ValueError("bad input"), False),
])
def test_out_of_memory_errors_of_every_backend_are_recognised(exc, expected):
    assert is_out_of_memory(exc) is expected


def test_tensorflow_out_of_memory_is_recognised():
    import tensorflow as tf

    assert is_out_of_memory(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))


def test_a_model_that_cannot_be_built_raises_its_one_sentence_and_keeps_the_cause():
    spec = ModelSpec("ResNet50", (64, 48), "/m/other.weights.h5")
    cause = ValueError("as an include_top=False file: Layer count mismatch")
    with pytest.raises(ModelLoadError) as error:
        with as_model_load_error(spec):
            raise cause
    assert error.value.sentence == ("weights '/m/other.weights.h5' do not fit ResNet50 at 64x48 (Layer count "
                                    "mismatch); give a weights file saved from ResNet50, or --weights imagenet or none")
    assert error.value.__cause__ is cause


@pytest.mark.parametrize("exc", [ImportError("No module named 'tensorflow'"), MemoryError()])
def test_a_missing_extra_and_a_full_host_pass_as_they_are(exc):
    with pytest.raises(type(exc)):
        with as_model_load_error(ModelSpec("ResNet50", (64, 64), None)):
            raise exc
