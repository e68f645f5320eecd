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
    install_requires=[
        "apache-beam>=2.77,<3",
        "tensorflow>=2.16",
        "keras>=3.3",
        "numpy>=1.26",
        "h5py>=3.10",
        "pyarrow>=14",
        "pillow>=10",
        "pyyaml>=6",
    ],
    extras_require={
        # Readers the tests prove the store works with, and the test runner.
        # apache-beam[gcp] lets the tests translate a Dataflow job (dry run, nothing uploaded).
        "test": ["pytest>=8", "pytest-timeout>=2", "hypothesis>=6", "pandas>=2", "duckdb>=1.1",
                 "embedding-reader>=1.7", "apache-beam[gcp]>=2.77,<3"],
    },
    entry_points={"console_scripts": ["featurize=pipeline.cli:main"]},
)
