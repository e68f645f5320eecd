"""The local progress line: workers' counts are summed and printed with a rate, totals and an ETA."""
import io
import time

from pipeline.job.progress import ProgressWriter, progress_line, total, watch


def test_writers_are_summed(tmp_path):
    first, second = ProgressWriter(str(tmp_path), every=0), ProgressWriter(str(tmp_path), every=3600)
    first.add(5)
    second.add(7)  # not written yet: within its interval
    assert total(str(tmp_path)) == (5, 0)
    second.unit_done()  # a finished unit is written at once
    assert total(str(tmp_path)) == (12, 1)


def test_progress_line_with_known_and_unknown_totals():
    known = progress_line(1200, 3, elapsed=10, rate=100.0, total_images=5000, total_units=12)
    assert known == "featurize: 1,200 of 5,000 inputs (24%), 100.0 images/s, units 3/12, ETA 0m38s (0m10s)"
    # tar shards: the images per unit seen so far estimate what is left (9 units x 400 images / 100 per s)
    shards = progress_line(1200, 3, elapsed=4000, rate=100.0, total_images=None, total_units=12)
    assert shards == "featurize: 1,200 images, 100.0 images/s, units 3/12, ETA 0m36s (1h06m)"
    assert "ETA" not in progress_line(10, 0, elapsed=1, rate=10.0, total_images=None, total_units=4)


def test_watch_prints_count_rate_and_total(tmp_path):
    stream = io.StringIO()
    stop = watch(str(tmp_path), total_images=80, total_units=2, interval=0.2, stream=stream)
    writer = ProgressWriter(str(tmp_path), every=0)
    writer.add(40)
    deadline = time.monotonic() + 10
    while "images/s" not in stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.05)
    stop()
    line = stream.getvalue().splitlines()[0]
    assert line.startswith("featurize: 40 of 80 inputs (50%), ") and "units 0/2" in line and "ETA" in line
