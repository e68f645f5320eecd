"""The job translates for Dataflow: a dry run builds the job proto with every stage, uploading nothing."""
from PIL import Image

# The gcp extra is part of the test extra: without it this module fails to import, loudly.
import apache_beam.runners.dataflow.internal.apiclient  # noqa: F401
import google.cloud.storage  # noqa: F401


def test_dry_run_translates_every_stage_into_a_custom_container_job(tmp_path):
    import apache_beam as beam

    from pipeline.job.launch import build, prepare

    (tmp_path / "in").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "a.jpg")
    job = prepare([
        "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--model", "MobileNetV3Small",
        "--weights", "none", "--image-size", "32", "--format", "hdf5",
        "--runner", "DataflowRunner", "--project", "dummy-project", "--region", "us-central1",
        "--temp_location", "gs://dummy-bucket/tmp", "--dry_run=True", "--no_auth",
        "--sdk_container_image", "registry.example/featurize-worker:0.1.0", "--job_name", "featurize-dry-run",
        "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver",
        "--experiments=no_use_multiple_sdk_containers"])
    assert job.progress_dir is None  # no local progress channel on a cluster runner
    assert job.handler._intra_op_threads is None  # TF sizes its pools to the worker machine
    p = beam.Pipeline(options=job.options)
    build(p, job)
    result = p.run()
    proto = result.job.proto_pipeline
    names = {t.unique_name for t in proto.components.transforms.values()}
    for stage in ("PendingUnits/Units", "PendingUnits/Spread", "ProcessUnits/ProcessUnit",
                  "WriteManifest/Finalize"):
        assert stage in names, f"{stage} missing from the Dataflow job"
    images = [env.payload for env in proto.components.environments.values()]
    assert any(b"registry.example/featurize-worker:0.1.0" in payload for payload in images)
    assert result.job.proto.name == "featurize-dry-run"
