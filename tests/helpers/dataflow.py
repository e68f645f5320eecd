"""Flags of a Dataflow dry run: the job graph is translated, nothing is submitted or uploaded.

Not a test module, and imports nothing: `bench/launcher_scale.py` hands these to children that
run another checkout's code."""

DATAFLOW_DRY_RUN = ["--runner", "DataflowRunner", "--project", "dummy-project", "--region", "us-central1",
                    "--temp_location", "gs://dummy-bucket/tmp", "--dry_run=True", "--no_auth",
                    "--sdk_container_image", "registry.example/featurize-worker:0.1.0",
                    "--job_name", "featurize-dry-run"]
