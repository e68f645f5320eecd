"""Object stores' settings (S3's endpoint and credentials) where every path is touched: the launcher's listing, the
default local runner's worker processes, and the store commands; and a quick probe that stops a run in one
sentence when the endpoint does not answer or refuses the credentials.

Beam builds its S3 filesystem from `FileSystems.set_options`, which nothing sets on a launcher (its listing runs
before any pipeline) nor on a store command: both call `use_options` (`files` does it with empty options on its
first URI, and boto3 then reads the standard AWS variables). The local runner starts its worker processes with
no pipeline options (Beam's fn_runner), so the `--s3_*` / `--aws_*` flags reach them as the standard AWS
variables they inherit (`worker_environment`); a cluster's workers read their own environment (README, "Object
stores"). Beam is imported inside functions only: `files` imports this module.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

PROBE_TIMEOUT_S = 5.0
# A connection refused, reset or cut mid-answer is tried again, this many tries in all, PROBE_PAUSE_S apart: a flaky
# network must not stop a run, and a closed port still fails within a second. A timeout is not tried again.
PROBE_ATTEMPTS = 3
PROBE_PAUSE_S = 0.2
# Beam's AWS client settings -> the standard variables boto3 reads when a client is given no value.
AWS_VARIABLES = {"endpoint_url": "AWS_ENDPOINT_URL", "access_key_id": "AWS_ACCESS_KEY_ID",
                 "secret_access_key": "AWS_SECRET_ACCESS_KEY", "session_token": "AWS_SESSION_TOKEN",
                 "region_name": "AWS_DEFAULT_REGION"}


def is_s3(path: str) -> bool:
    return path.strip().lower().startswith("s3://")


def use_options(options: "PipelineOptions | None" = None) -> None:
    """Beam's filesystems (S3's client) built from `options`; none: from the environment alone."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    FileSystems.set_options(options if options is not None else PipelineOptions([]))


def s3_settings(options: "PipelineOptions") -> dict[str, Any]:
    """The S3 client settings the flags give (`--s3_*` over `--aws_*`); unset ones are left out."""
    from apache_beam.options.pipeline_options import AwsOptions, S3Options

    settings = options.view_as(AwsOptions).get_client_settings(options.view_as(S3Options))
    return {name: value for name, value in settings.items() if value not in (None, False)}


@contextmanager
def worker_environment(options: "PipelineOptions") -> Iterator[None]:
    """The flags' S3 settings as the standard AWS variables while the pipeline runs (the local runner's
    worker processes inherit them: Beam starts them without pipeline options); the variables as they were
    after."""
    given = {AWS_VARIABLES[name]: str(value) for name, value in s3_settings(options).items() if name in AWS_VARIABLES}
    before = {name: os.environ.get(name) for name in given}
    os.environ.update(given)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _bucket_and_prefix(path: str) -> tuple[str, str]:
    bucket, _, key = path.strip()[len("s3://"):].partition("/")
    for index, char in enumerate(key):  # a glob lists from the prefix before its first wildcard
        if char in "*?[{":
            key = key[:index]
            break
    return bucket, key


def probe_s3(path: str, role: str, options: "PipelineOptions | None" = None,
             timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """List one key under `path` (`timeout_s` per connect and read; a connection refused or cut is tried again,
    PROBE_ATTEMPTS in all; a timeout is not), so that an endpoint that does not answer or refuses the credentials
    stops the command in one sentence, not after Beam's minutes of retries. `role` names what `path` is (`input`,
    `output`, `store`)."""
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionClosedError, ConnectTimeoutError,
                                         EndpointConnectionError, IncompleteReadError, NoCredentialsError,
                                         ResponseStreamingError)
    except ImportError as exc:
        raise ConfigError(f"{role} {path!r} is on S3, which needs boto3 ({exc}); install it with "
                          f"pip install 'featurize[aws]'") from None
    from apache_beam.io.aws.clients.client_options import get_client_kwargs
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions, S3Options

    if options is None:  # what Beam's filesystems use: a finished run's flags, else the environment alone
        options = FileSystems._pipeline_options or PipelineOptions([])  # pylint: disable=protected-access
    kwargs = get_client_kwargs(options, S3Options)
    config = Config(connect_timeout=timeout_s, read_timeout=timeout_s, retries={"total_max_attempts": 1})
    client = boto3.session.Session().client("s3", config=config, **kwargs)
    endpoint = client.meta.endpoint_url
    bucket, prefix = _bucket_and_prefix(path)
    try:
        for attempt in range(1, PROBE_ATTEMPTS + 1):
            try:
                client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
                break
            except (EndpointConnectionError, ConnectionClosedError, IncompleteReadError, ResponseStreamingError) as exc:
                if attempt == PROBE_ATTEMPTS or isinstance(exc, ConnectTimeoutError):
                    raise
                time.sleep(PROBE_PAUSE_S)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise ConfigError(f"{role} {path!r} cannot be read: the S3 endpoint {endpoint} refused to list bucket "
                          f"{bucket!r} ({error.get('Code')}: {error.get('Message')}); check the bucket and the "
                          f"credentials (--s3_access_key_id / --s3_secret_access_key, or AWS_ACCESS_KEY_ID / "
                          f"AWS_SECRET_ACCESS_KEY)") from None
    except NoCredentialsError:
        raise ConfigError(f"{role} {path!r} cannot be read: no S3 credentials were found; give "
                          f"--s3_access_key_id and --s3_secret_access_key, or set AWS_ACCESS_KEY_ID and "
                          f"AWS_SECRET_ACCESS_KEY") from None
    except BotoCoreError as exc:  # no answer: refused, a timeout
        raise ConfigError(f"{role} {path!r} cannot be read: the S3 endpoint {endpoint} did not answer within "
                          f"{timeout_s:.0f} s ({type(exc).__name__}: {exc}); check --s3_endpoint_url or "
                          f"AWS_ENDPOINT_URL, and the credentials") from None
