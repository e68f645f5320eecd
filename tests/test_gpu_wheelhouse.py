"""tools/gpu_wheelhouse.py builds, from the package index, what the GPU image lacks to run the GPU check
(bench/gpu_run.sh): Beam, Keras, their own dependencies the image does not have and featurize's wheel, under the
carry limit, and nothing the image has (its numpy, pyarrow, grpcio, protobuf, Pillow, h5py, JAX, PyTorch stay)."""
import os
import pathlib
import subprocess
import sys
from importlib.metadata import version


from tests.helpers.portable import REPO

sys.path.insert(0, str(REPO / "tools"))
import gpu_wheelhouse  # noqa: E402 - tools/ is not a package

IMAGE_HAS = ["numpy", "torch", "jax", "jaxlib", "pyarrow", "grpcio", "protobuf", "pillow", "h5py", "pyyaml"]


def distributions(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """normalized name -> wheel, for every wheel in `folder`."""
    return {gpu_wheelhouse.normalize(wheel.name.split("-")[0]): wheel for wheel in folder.glob("*.whl")}


def test_the_image_list_holds_what_the_gpu_image_has():
    image = gpu_wheelhouse.image_packages()
    assert set(IMAGE_HAS) <= image
    assert not {"apache-beam", "keras", "tensorflow", "featurize"} & image


def test_selection_leaves_out_the_image_and_tensorflow():
    resolved = [("apache-beam", "2.78.0"), ("NumPy", "2.4.6"), ("typing_extensions", "4.16.0"), ("keras", "3.15.1"),
                ("optree", "0.20.0"), ("tensorflow", "2.21.0"), ("Pillow", "13.0.0")]
    image = {"numpy", "typing-extensions", "pillow"}
    assert gpu_wheelhouse.select(resolved, image) == [("apache-beam", "2.78.0"), ("keras", "3.15.1"),
                                                      ("optree", "0.20.0")]


def test_the_wheelhouse_holds_beam_keras_and_featurize_under_the_carry_limit(tmp_path):
    """A real build from the index (about 10 s and 39 MiB here)."""
    wheels = gpu_wheelhouse.build(tmp_path / "wheelhouse")
    found = distributions(tmp_path / "wheelhouse")
    total = sum(w.stat().st_size for w in wheels)
    print(f"wheelhouse: {len(wheels)} wheels, {total / 2 ** 20:.1f} MiB")
    assert total < gpu_wheelhouse.CARRY_LIMIT_BYTES
    assert {"apache-beam", "keras", "featurize", "google-crc32c", "optree", "fastavro"} <= set(found)
    assert not (set(IMAGE_HAS) | {"tensorflow"}) & set(found)
    assert not set(found) & gpu_wheelhouse.image_packages()
    for name, wheel in found.items():  # each for the image's CPython 3.12 on x86_64 (or pure Python)
        tags = wheel.name[:-len(".whl")].split("-")[-3:]
        assert tags[0] in ("py3", "py2.py3", "cp312") or tags[1] == "abi3", wheel.name
        assert tags[2] == "any" or "x86_64" in tags[2], wheel.name
    versions = {name: wheel.name.split("-")[1] for name, wheel in found.items()}
    assert (versions["apache-beam"], versions["keras"]) == (version("apache-beam"), version("keras"))  # as tested here


def test_the_runner_refuses_without_a_wheelhouse(tmp_path):
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu_run.sh")], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, WHEELHOUSE=str(tmp_path)))
    assert done.returncode == 2 and "python tools/gpu_wheelhouse.py" in done.stderr, done.stderr
