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
    assert 'pip install --no-cache-dir "/opt/featurize[hub]"' in DOCKERFILE
    assert "tensorflow[and-cuda]" in DOCKERFILE


def test_dockerfile_text_can_bake_weights():
    assert 'ARG BAKE_WEIGHTS=""' in DOCKERFILE and "weights='imagenet'" in DOCKERFILE
    assert "ENV KERAS_HOME=/opt/keras" in DOCKERFILE


def test_dockerfile_text_pins_the_tensorflow_minor_release_that_tensorflow_text_requires():
    """keras-hub (the hub extra) pulls tensorflow-text, which pins TensorFlow's minor release: the image's
    TensorFlow range must be that one, or pip in the image resolves another pair than the one tested here."""
    import importlib.metadata

    wanted = next(r for r in importlib.metadata.requires("tensorflow-text") if r.startswith("tensorflow<")
                  or r.startswith("tensorflow>") or r.startswith("tensorflow ("))
    bounds = sorted(re.findall(r"([<>]=?)\s*(\d+\.\d+)", wanted))
    image = re.search(r'"tensorflow\[and-cuda\]([^"]+)"', DOCKERFILE).group(1)
    assert sorted(re.findall(r"([<>]=?)\s*(\d+\.\d+)", image)) == bounds, (wanted, image)
