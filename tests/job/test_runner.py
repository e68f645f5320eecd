"""The runner: Beam flags pass through, local workers and their TensorFlow threads."""
from pipeline.job.config import RunConfig
from pipeline.job.runner import local_workers, pipeline_options, tf_threads_per_worker


def test_beam_worker_flags_pass_through_and_size_the_thread_pools(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    options = pipeline_options(["--direct_num_workers=4"])
    assert local_workers(options) == 4
    config = RunConfig(input="i", output="o")
    assert tf_threads_per_worker(config, options) == 2
    assert local_workers(pipeline_options(["--direct_running_mode=multi_processing",
                                           "--direct_num_workers=0"])) == 8
    assert local_workers(pipeline_options([])) == 8
    assert tf_threads_per_worker(RunConfig(input="i", output="o", model_sharing="machine"), options) == 8
    assert local_workers(pipeline_options(["--runner=PortableRunner", "--job_endpoint=localhost:1"])) is None
