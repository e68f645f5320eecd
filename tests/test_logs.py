"""pipeline.logs: the run's log file and the one sentence a failed run ends with."""
import logging

import pytest

from pipeline.logs import JobError, RunFailed, RunLog, sentence_in


def test_a_job_error_s_sentence_is_found_through_causes_and_in_text_that_wrapped_it():
    try:
        try:
            raise JobError("12.0% of 100 inputs are error rows")
        except JobError as inner:
            raise RuntimeError("the bundle failed") from inner
    except RuntimeError as outer:
        assert sentence_in(outer) == "12.0% of 100 inputs are error rows"
    wrapped = RuntimeError(f"worker said: {JobError('the model cannot be built')}\nTraceback ...")
    assert sentence_in(wrapped) == "the model cannot be built"
    assert sentence_in(ValueError("plain")) is None


def test_a_failed_run_writes_its_traceback_to_the_log_and_says_one_sentence(tmp_path):
    log = RunLog(str(tmp_path), verbose=False)
    try:
        logging.getLogger("apache_beam.runners").info("a Beam line for the file only")
        try:
            raise OSError("disk full\n  while writing")
        except OSError as exc:
            failed = log.failed(exc)
    finally:
        log.close()
    assert isinstance(failed, RunFailed) and failed.log_path == log.path
    assert str(failed).startswith("the run failed (OSError: disk full while writing)")
    text = open(log.path).read()
    assert "Traceback" in text and "a Beam line for the file only" in text
    assert log.path.startswith(str(tmp_path / "_featurize" / "logs"))
    with pytest.raises(RunFailed):
        raise failed
