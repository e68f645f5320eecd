#!/usr/bin/env python3
"""Boot program for Beam Python SDK workers started by a worker pool (EXTERNAL environments).

What the `boot` program of Beam's SDK containers does, without Docker, so that a plain
`python -m apache_beam.runners.worker.worker_pool_main --container_executable tools/beam_boot.py`
installs the code a job staged (`--setup_file`, `--extra_package`, `--requirements_file`)
before the SDK worker starts:

1. ask the provision service (GetProvisionInfo) for the pipeline options and the job's
   dependencies (artifacts);
2. fetch every artifact from the artifact retrieval service (GetArtifact, streamed chunks)
   into SEMI/staged/<staged name>;
3. `pip install --no-deps --target SEMI/site-packages` the extra packages and the
   setup-file sdist (workflow.tar.gz), and the requirements file with `--no-index
   --find-links SEMI/staged` (never the network: no build isolation either);
4. record where the worker's environment imports the probe module (`pipeline`) from,
   plus the staged artifact names, as one JSON line appended to $FEATURIZE_BOOT_LOG (a boot
   that fails appends {"worker_id", "error", "traceback"} there instead, and exits non-zero);
5. exec `python -m apache_beam.runners.worker.sdk_worker_main` with SEMI/site-packages
   first on PYTHONPATH, the working directory SEMI and the environment variables the
   SDK harness reads (WORKER_ID, SEMI_PERSISTENT_DIRECTORY, PIPELINE_OPTIONS,
   CONTROL_API_SERVICE_DESCRIPTOR, LOGGING_API_SERVICE_DESCRIPTOR, STATUS_API_SERVICE_DESCRIPTOR,
   RUNNER_CAPABILITIES).

SEMI, the semi-persistent directory, is --semi_persist_dir when given, else
a new $FEATURIZE_BOOT_DIR/worker-<id>-XXXXXX per boot, else the same
under <tmp>/beam-boot.

Environment variables (all optional):
    FEATURIZE_BOOT_LOG        append one JSON line per worker here (see step 4)
    FEATURIZE_BOOT_DIR        parent of the per-worker semi-persistent directories
    FEATURIZE_BOOT_LOCALHOST  "1": connect to every endpoint through localhost (single-machine
                              tests: the runner may name the worker's host by its FQDN)
    FEATURIZE_BOOT_PROBE      module whose import location is recorded (default: pipeline)
    FEATURIZE_BOOT_TIMEOUT    seconds allowed for each RPC and each pip call (default 300)

The worker pool pipes a worker's stdout and never reads it, so this program sends its
stdout (and the SDK worker's) to stderr first thing.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

PIP_FLAGS = ["--disable-pip-version-check", "--no-cache-dir", "--no-build-isolation", "--no-index",
             "--no-warn-script-location", "--upgrade", "--quiet"]
WORKFLOW_TARBALL = "workflow.tar.gz"          # apache_beam.runners.portability.stager.WORKFLOW_TARBALL_FILE
EXTRA_PACKAGES = "extra_packages.txt"         # stager.EXTRA_PACKAGES_FILE
REQUIREMENTS = "requirements.txt"             # stager.REQUIREMENTS_FILE


def log(message: str) -> None:
    print(f"beam_boot[{os.getpid()}]: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--id", required=True, help="worker id")
    parser.add_argument("--logging_endpoint", required=True)
    parser.add_argument("--artifact_endpoint", required=True)
    parser.add_argument("--provision_endpoint", required=True)
    parser.add_argument("--control_endpoint", required=True)
    parser.add_argument("--semi_persist_dir", default=None)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        log(f"ignoring unknown arguments {unknown}")
    return args


def localhost(url: str) -> str:
    """host:port -> localhost:port when FEATURIZE_BOOT_LOCALHOST=1; anything else unchanged."""
    if not url or os.environ.get("FEATURIZE_BOOT_LOCALHOST") != "1":
        return url
    return "localhost:" + url.rsplit(":", 1)[-1]


def semi_persistent_dir(args: argparse.Namespace) -> str:
    if args.semi_persist_dir:
        path = args.semi_persist_dir
    else:
        base = os.environ.get("FEATURIZE_BOOT_DIR") or os.path.join(tempfile.gettempdir(), "beam-boot")
        os.makedirs(base, exist_ok=True)
        # One directory per boot: a runner may reuse worker ids across jobs, and a second job
        # must never run the first job's code.
        safe_id = "".join(c if c.isalnum() or c in "-_." else "_" for c in args.id)
        path = tempfile.mkdtemp(prefix=f"worker-{safe_id}-", dir=base)
    os.makedirs(path, exist_ok=True)
    return os.path.abspath(path)


def provision_info(endpoint: str, worker_id: str, timeout: float):
    import grpc
    from apache_beam.portability.api import beam_provision_api_pb2, beam_provision_api_pb2_grpc

    with grpc.insecure_channel(endpoint) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        stub = beam_provision_api_pb2_grpc.ProvisionServiceStub(channel)
        response = stub.GetProvisionInfo(beam_provision_api_pb2.GetProvisionInfoRequest(),
                                         metadata=[("worker_id", worker_id)], timeout=timeout)
    return response.info


def staged_name(artifact, index: int) -> str:
    """The name the submitter staged the artifact under (STAGING_TO role), else a stable fallback."""
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    if artifact.role_urn == common_urns.artifact_roles.STAGING_TO.urn:
        name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(artifact.role_payload).staged_name
        return os.path.basename(name)
    if artifact.type_urn == common_urns.artifact_types.FILE.urn:
        path = beam_runner_api_pb2.ArtifactFilePayload.FromString(artifact.type_payload).path
        return f"{index:03d}-{os.path.basename(path)}"
    return f"artifact-{index:03d}"


def fetch_artifacts(endpoint: str, worker_id: str, dependencies, staged_dir: str, timeout: float) -> list[str]:
    """GetArtifact for each dependency into staged_dir/<staged name>; returns the names in order."""
    import grpc
    from apache_beam.portability.api import beam_artifact_api_pb2, beam_artifact_api_pb2_grpc

    os.makedirs(staged_dir, exist_ok=True)
    names = []
    with grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", -1)]) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout)
        stub = beam_artifact_api_pb2_grpc.ArtifactRetrievalServiceStub(channel)
        for index, artifact in enumerate(dependencies):
            name = staged_name(artifact, index)
            path = os.path.join(staged_dir, name)
            size = 0
            with open(path + ".part", "wb") as out:
                for chunk in stub.GetArtifact(beam_artifact_api_pb2.GetArtifactRequest(artifact=artifact),
                                              metadata=[("worker_id", worker_id)], timeout=timeout):
                    out.write(chunk.data)
                    size += len(chunk.data)
            os.replace(path + ".part", path)
            log(f"fetched {name} ({size} bytes)")
            names.append(name)
    return names


def pip_install(args: list[str], target: str, timeout: float) -> None:
    command = [sys.executable, "-m", "pip", "install", *PIP_FLAGS, "--target", target, *args]
    log("running " + " ".join(command))
    # stdout -> our stderr (fd 1 already points there); a failed install stops the boot.
    subprocess.run(command, check=True, timeout=timeout, stdout=sys.stderr, stdin=subprocess.DEVNULL)


def install_staged(staged_dir: str, names: list[str], target: str, timeout: float) -> list[str]:
    """Install what a Python submitter stages, in the order Beam's boot does; returns what was installed."""
    os.makedirs(target, exist_ok=True)
    installed = []
    if EXTRA_PACKAGES in names:
        with open(os.path.join(staged_dir, EXTRA_PACKAGES)) as handle:
            extras = [line.strip() for line in handle if line.strip()]
        for extra in extras:
            pip_install(["--no-deps", os.path.join(staged_dir, extra)], target, timeout)
            installed.append(extra)
    if WORKFLOW_TARBALL in names:
        pip_install(["--no-deps", os.path.join(staged_dir, WORKFLOW_TARBALL)], target, timeout)
        installed.append(WORKFLOW_TARBALL)
    if REQUIREMENTS in names:
        pip_install(["--find-links", staged_dir, "-r", os.path.join(staged_dir, REQUIREMENTS)], target, timeout)
        installed.append(REQUIREMENTS)
    return installed


def worker_environment(args, info, semi: str, install_dir: str) -> dict[str, str]:
    from google.protobuf import json_format, text_format
    from apache_beam.portability.api import endpoints_pb2

    def descriptor(url: str) -> str:
        return text_format.MessageToString(endpoints_pb2.ApiServiceDescriptor(url=localhost(url)))

    env = dict(os.environ)
    pythonpath = [install_dir] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env.update({
        "PYTHONPATH": os.pathsep.join(pythonpath),
        "WORKER_ID": args.id,
        "SEMI_PERSISTENT_DIRECTORY": semi,
        # As Beam's boot writes it: the options Struct as JSON ({"beam:option:NAME:v1": value, ...}).
        "PIPELINE_OPTIONS": json_format.MessageToJson(info.pipeline_options),
        "CONTROL_API_SERVICE_DESCRIPTOR": descriptor(info.control_endpoint.url or args.control_endpoint),
        "LOGGING_API_SERVICE_DESCRIPTOR": descriptor(info.logging_endpoint.url or args.logging_endpoint),
        "RUNNER_CAPABILITIES": " ".join(info.runner_capabilities),
    })
    if info.status_endpoint.url:
        env["STATUS_API_SERVICE_DESCRIPTOR"] = descriptor(info.status_endpoint.url)
    return env


def probe_import(module: str, env: dict[str, str], cwd: str, timeout: float) -> dict[str, str | None]:
    """Where `module` imports from in the worker's environment (a fresh interpreter, same env and cwd)."""
    code = f"import {module}; print({module}.__file__)"
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"file": None, "error": f"timed out after {timeout} s"}
    if done.returncode:
        return {"file": None, "error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed"}
    return {"file": done.stdout.strip().splitlines()[-1], "error": None}


def append_record(record: dict) -> None:
    path = os.environ.get("FEATURIZE_BOOT_LOG")
    line = json.dumps(record, sort_keys=True)
    log("record " + line)
    if path:
        # One write of one line: concurrent workers append whole lines.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)


def main(argv: list[str] | None = None) -> int:
    os.dup2(2, 1)  # the pool pipes stdout and never reads it: a chatty worker would block
    started = time.time()
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        boot(args, started)
    except BaseException as exc:
        # Without a worker the job would wait minutes for one: leave the reason where tests look.
        import traceback

        append_record({"worker_id": args.id, "pid": os.getpid(), "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc(), "boot_seconds": round(time.time() - started, 2)})
        raise
    return 0  # not reached: boot() execs the SDK worker


def boot(args: argparse.Namespace, started: float) -> None:
    timeout = float(os.environ.get("FEATURIZE_BOOT_TIMEOUT", "300"))
    semi = semi_persistent_dir(args)
    staged_dir = os.path.join(semi, "staged")
    install_dir = os.path.join(semi, "site-packages")
    log(f"worker {args.id}: semi-persistent directory {semi}")

    info = provision_info(localhost(args.provision_endpoint), args.id, timeout)
    artifact_endpoint = localhost(info.artifact_endpoint.url or args.artifact_endpoint)
    names = fetch_artifacts(artifact_endpoint, args.id, info.dependencies, staged_dir, timeout)
    installed = install_staged(staged_dir, names, install_dir, timeout)

    env = worker_environment(args, info, semi, install_dir)
    probe = os.environ.get("FEATURIZE_BOOT_PROBE", "pipeline")
    where = probe_import(probe, env, semi, timeout)
    append_record({
        "worker_id": args.id, "pid": os.getpid(), "semi_persistent_dir": semi, "install_dir": install_dir,
        "artifacts": names, "installed": installed, "probe": probe, "probe_file": where["file"],
        "probe_error": where["error"], "python": sys.executable, "pythonpath": env["PYTHONPATH"],
        "cwd": semi, "boot_seconds": round(time.time() - started, 2),
    })

    command = [sys.executable, "-m", "apache_beam.runners.worker.sdk_worker_main"]
    log("exec " + " ".join(command))
    sys.stderr.flush()
    os.chdir(semi)
    os.execve(sys.executable, command, env)


if __name__ == "__main__":
    sys.exit(main())
