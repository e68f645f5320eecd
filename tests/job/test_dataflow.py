"""The job translates for Dataflow: a dry run builds the job proto with every stage, uploading nothing."""
from PIL import Image

# The gcp extra is part of the test extra: without it this module fails to import, loudly.
import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
import google.cloud.storage  # noqa: F401

from tests.helpers.dataflow import DATAFLOW_DRY_RUN


def dry_run_job(input_path, output, *flags):
    """prepare -> upload_plan -> build -> a Dataflow dry run (translation only): (job, result)."""
    import apache_beam as beam

    from pipeline.job.launch import build, prepare, upload_plan

    job = prepare(["--input", str(input_path), "--output", str(output), "--model", "MobileNetV3Small",
                   "--weights", "none", "--image-size", "32", *DATAFLOW_DRY_RUN, *flags])
    upload_plan(job)
    p = beam.Pipeline(options=job.options)
    build(p, job)
    return job, p.run()


def test_dry_run_translates_every_stage_into_a_custom_container_job(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.jpg")
    job, result = dry_run_job(
        tmp_path / "in", tmp_path / "out", "--format", "hdf5",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
        "--experiments=no_use_multiple_sdk_containers")
    assert job.progress_dir is None  # no local progress channel on a cluster runner
    assert job.handler._intra_op_threads is None  # TF sizes its pools to the worker machine
    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    for stage in ("PlannedUnits/PlanParts", "PlannedUnits/ReadPlan", "PlannedUnits/Spread",
                  "ProcessUnits/ProcessUnit", "WriteManifest/Finalize"):
        assert stage in names, f"{stage} missing from the Dataflow job"
    images = [env.payload for env in proto.components.environments.values()]
    assert any(b"registry.example/featurize-worker:0.1.0" in payload for payload in images)
    assert result.job.proto.name == "featurize-dry-run"


def graph_bytes(tmp_path, name, count, suffix, *flags):
    folder = tmp_path / name
    folder.mkdir()
    for index in range(count):  # empty files: a dry run lists them, it reads none
        (folder / f"{index:06d}{suffix}").touch()
    job, result = dry_run_job(f"{folder}/*{suffix}", tmp_path / f"{name}-out", "--unit-size", "10", *flags)
    return len(job.plan.pending), result.job.proto_pipeline.ByteSize()


def test_the_job_graph_carries_the_plan_s_folder_not_its_units(tmp_path):
    """Units are in the store (_featurize/plan/), so the graph does not grow with the input (Dataflow
    refuses graphs over 10 MB: the member lists of ~1.7M files once were). It holds one integer per
    plan part, and parts stop at 1,024 units."""
    few_units, few = graph_bytes(tmp_path, "few", 20, ".jpg", "--batch-size", "2")
    many_units, many = graph_bytes(tmp_path, "many", 3000, ".jpg", "--batch-size", "2")
    most_units, most = graph_bytes(tmp_path, "most", 30000, ".jpg", "--batch-size", "2")
    assert (few_units, many_units, most_units) == (10, 300, 3000)
    assert many - few < 2000 and most - many < 3000, (few, many, most)  # ~3 bytes a part
    few_units, few = graph_bytes(tmp_path, "few-tars", 3, ".tar")
    many_units, many = graph_bytes(tmp_path, "many-tars", 500, ".tar")
    assert (few_units, many_units) == (3, 500)
    assert many - few < 2000, (few, many)
