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
    # Workers that are threads of this process share one TensorFlow: one process, however many threads.
    for threads in (["--direct_running_mode=in_memory"], ["--direct_running_mode=multi_threading",
                                                          "--direct_num_workers=4"]):
        assert local_workers(pipeline_options(threads)) == 1


def test_a_small_run_runs_in_this_process_unless_the_user_chose_the_workers(monkeypatch):
    from pipeline.job.runner import SMALL_RUN_BYTES, SMALL_RUN_INPUTS, is_small_run, local_parallelism
    monkeypatch.setattr("os.cpu_count", lambda: 4)
    assert is_small_run(SMALL_RUN_INPUTS, 10**12) and not is_small_run(SMALL_RUN_INPUTS + 1, 0)
    assert is_small_run(None, SMALL_RUN_BYTES) and not is_small_run(None, SMALL_RUN_BYTES + 1)  # shards: by bytes
    assert local_parallelism(pipeline_options([], small_run=True)) == 1
    assert local_parallelism(pipeline_options([])) == 4
    for chosen in (["--direct_num_workers=2"], ["--direct_running_mode=multi_threading", "--direct_num_workers=2"]):
        assert local_parallelism(pipeline_options(chosen, small_run=True)) > 1
    assert local_parallelism(pipeline_options(["--runner=PortableRunner", "--job_endpoint=localhost:1"],
                                              small_run=True)) == 0


def test_a_run_of_few_files_is_prepared_for_this_process_and_a_larger_or_jax_one_for_every_core(tmp_path, monkeypatch):
    from pipeline.job import launch, runner
    from pipeline.job.runner import local_parallelism
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.png").write_bytes(b"not read while planning")
    args = ["--input", str(folder), "--output", str(tmp_path / "out"), "--model", "MobileNetV3Small",
            "--weights", "none", "--image-size", "32", "--dry-run"]
    assert local_parallelism(launch.prepare(args).options) == 1
    # The launcher's Keras runs on TensorFlow: a JAX run, however small, keeps its worker processes.
    assert local_parallelism(launch.prepare([*args, "--keras-backend", "jax"]).options) == 2
    monkeypatch.setattr(runner, "SMALL_RUN_INPUTS", 4)
    assert local_parallelism(launch.prepare(args).options) == 2
