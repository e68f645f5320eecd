"""What can be checked of the worker image without Docker: the Dockerfile's text (these tests read it, they build nothing)."""
import re
from pathlib import Path

import apache_beam

DOCKERFILE = (Path(__file__).resolve().parents[2] / "Dockerfile").read_text()


def test_dockerfile_text_pins_the_installed_beam_version():
    pinned = re.search(r"^ARG BEAM_VERSION=(\S+)$", DOCKERFILE, re.M).group(1)
    assert pinned == apache_beam.__version__
    assert "FROM apache/beam_python3.11_sdk:${BEAM_VERSION}" in DOCKERFILE


def test_dockerfile_text_has_beams_boot_and_installs_the_package():
    assert re.search(r'^ENTRYPOINT \["/opt/apache/beam/boot"\]$', DOCKERFILE, re.M)
    assert "COPY pipeline /opt/featurize/pipeline" in DOCKERFILE
    assert "pip install --no-cache-dir /opt/featurize" in DOCKERFILE
    assert "tensorflow[and-cuda]" in DOCKERFILE


def test_dockerfile_text_can_bake_weights():
    assert 'ARG BAKE_WEIGHTS=""' in DOCKERFILE and "weights='imagenet'" in DOCKERFILE
    assert "ENV KERAS_HOME=/opt/keras" in DOCKERFILE
