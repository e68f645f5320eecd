"""The local progress line: workers' counts are summed and printed with a rate."""
import io
import time

from pipeline.progress import ProgressWriter, total, watch


def test_writers_are_summed(tmp_path):
    first, second = ProgressWriter(str(tmp_path), every=0), ProgressWriter(str(tmp_path), every=3600)
    first.add(5)
    second.add(7)  # not written yet: within its interval
    assert total(str(tmp_path)) == 5
    second.flush()
    assert total(str(tmp_path)) == 12


def test_watch_prints_count_and_rate(tmp_path):
    stream = io.StringIO()
    stop = watch(str(tmp_path), interval=0.2, stream=stream)
    writer = ProgressWriter(str(tmp_path), every=0)
    writer.add(40)
    deadline = time.monotonic() + 10
    while "images/s" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop()
    line = stream.getvalue().splitlines()[0]
    assert line.startswith("featurize: 40 images decoded, ") and "images/s" in line
