#!/usr/bin/env python3
"""Build, on a machine with the package index, the wheelhouse the GPU machine needs to run featurize.

    python tools/gpu_wheelhouse.py [--out .wheelhouse] [--python-version 3.12]

The GPU machine's image (tools/gpu_image_packages.txt) has JAX, PyTorch, numpy, pyarrow, grpcio, protobuf,
Pillow and h5py, but neither Beam nor Keras, and it cannot reach any index. This resolves featurize's runtime
requirements without TensorFlow (the check runs `--keras-backend jax`) for that image's Python (CPython, manylinux
x86_64), pinned to the versions installed here where there are any (so the GPU runs what the tests ran), leaves
out every package the image has, downloads the rest as wheels and adds featurize's own wheel (built without its
dependencies). `bench/gpu_run.sh` installs them there with `--no-index --no-deps`.

The wheelhouse must travel with the working tree (64 MiB at most): a larger one is refused.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
IMAGE_PACKAGES = ROOT / "tools" / "gpu_image_packages.txt"
CARRY_LIMIT_BYTES = 64 * 2 ** 20
# The wheelhouse leaves room for the working tree beside it under the carry limit.
SIZE_LIMIT_BYTES = 48 * 2 ** 20
LEFT_OUT = {"tensorflow"}  # the GPU check runs Keras on JAX; TensorFlow's CUDA wheels alone are over 500 MB
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares them (`Pillow`, `typing_extensions` -> `pillow`, `typing-extensions`)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def image_packages(path: pathlib.Path = IMAGE_PACKAGES) -> set[str]:
    return {normalize(line.strip()) for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def runtime_requirements(wheel: pathlib.Path) -> list[str]:
    """featurize's Requires-Dist without extras' entries and without LEFT_OUT, read from its wheel."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        lines = archive.read(metadata).decode().splitlines()
    requirements = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Requires-Dist:")]
    return [r for r in requirements if "extra ==" not in r
            and normalize(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) not in LEFT_OUT]


def pinned(requirements: list[str]) -> list[str]:
    """Each requirement, plus `NAME==VERSION` where NAME is installed here (the versions the tests ran)."""
    pins = []
    for requirement in requirements:
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return requirements + pins


def target_flags(python_version: str) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    return ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi,
            *[flag for platform in PLATFORMS for flag in ("--platform", platform)]]


def resolve(requirements: list[str], python_version: str, scratch: pathlib.Path) -> list[tuple[str, str]]:
    """(name, version) of every distribution pip would install for `requirements` on the target Python."""
    report = scratch / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                    "--report", str(report), "--target", str(scratch / "unused"), *target_flags(python_version),
                    *requirements], check=True)
    return [(item["metadata"]["name"], item["metadata"]["version"])
            for item in json.loads(report.read_text())["install"]]


def select(resolved: list[tuple[str, str]], image: set[str]) -> list[tuple[str, str]]:
    """What the wheelhouse must hold: every resolved distribution the image lacks, sorted by name."""
    return sorted((name, version) for name, version in resolved
                  if normalize(name) not in image and normalize(name) not in LEFT_OUT)


def build(out: pathlib.Path, python_version: str = "3.12") -> list[pathlib.Path]:
    """The wheelhouse in `out` (emptied first); returns its wheels. Raises SystemExit when it is too large."""
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu-wheelhouse-") as scratch_name:
        scratch = pathlib.Path(scratch_name)
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "--wheel-dir", str(out), str(ROOT)], check=True)
        [own] = out.glob("featurize-*.whl")
        wanted = select(resolve(pinned(runtime_requirements(own)), python_version, scratch), image_packages())
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", str(out),
                        *target_flags(python_version), *[f"{name}=={version}" for name, version in wanted]],
                       check=True)
    wheels = sorted(out.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    if total > SIZE_LIMIT_BYTES:
        raise SystemExit(f"gpu_wheelhouse: {out} holds {total / 2 ** 20:.1f} MiB, over the "
                         f"{SIZE_LIMIT_BYTES / 2 ** 20:.0f} MiB that leaves room for the working tree under the {CARRY_LIMIT_BYTES / 2 ** 20:.0f} MiB "
                         f"carry limit")
    return wheels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=ROOT / ".wheelhouse")
    parser.add_argument("--python-version", default="3.12", help="the GPU image's Python (major.minor)")
    args = parser.parse_args(argv)
    wheels = build(args.out, args.python_version)
    total = sum(w.stat().st_size for w in wheels)
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2 ** 20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total / 2 ** 20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
