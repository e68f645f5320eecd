"""What can be checked of the worker image without Docker: versions, entrypoint, contents."""
import re
from pathlib import Path

import apache_beam

DOCKERFILE = (Path(__file__).resolve().parents[1] / "Dockerfile").read_text()


def test_beam_version_matches_the_installed_sdk():
    pinned = re.search(r"^ARG BEAM_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert pinned == apache_beam.__version__
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in DOCKERFILE


def test_entrypoint_is_beams_boot_and_package_is_installed():
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', DOCKERFILE, re.M)
    assert "COPY pipeline /opt/featurize/pipeline" in DOCKERFILE
    assert "pip install --no-cache-dir /opt/featurize" in DOCKERFILE
    assert "tensorflow[and-cuda]" in DOCKERFILE


def test_weights_can_be_baked_at_build_time():
    assert 'ARG BAKE_WEIGHTS=""' in DOCKERFILE and "weights='imagenet'" in DOCKERFILE
    assert "ENV KERAS_HOME=/opt/keras" in DOCKERFILE
