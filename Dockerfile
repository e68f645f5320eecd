# The SDK container a Beam worker runs (Dataflow custom container, Flink/Spark
# portable workers with --environment_type=DOCKER). Beam's boot program is the
# entrypoint: it receives the job's artifacts, installs them and starts the SDK worker.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

# TensorFlow with the CUDA libraries from PyPI: the same image serves CPU and GPU workers.
COPY setup.py README.md /opt/featurize/
COPY pipeline /opt/featurize/pipeline
RUN pip install --no-cache-dir "tensorflow[and-cuda]>=2.16" /opt/featurize

ENTRYPOINT ["/opt/apache/beam/boot"]
