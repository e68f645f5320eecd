# The custom SDK container a Beam worker runs: Dataflow (--sdk_container_image), Flink and
# Spark portable workers (--environment_type=DOCKER --environment_config=IMAGE).
# Beam's boot program is the entrypoint: it receives the job's artifacts, installs them
# and starts the SDK worker. BEAM_VERSION must equal the apache-beam that submits the job.
#
#   docker build -t REGISTRY/featurize-worker:0.1.0 .
#   docker build --build-arg BAKE_WEIGHTS=ResNet50,VGG16 -t REGISTRY/featurize-worker:0.1.0 .
ARG BEAM_VERSION=2.78.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

# TensorFlow with its CUDA libraries from PyPI: one image for CPU and GPU workers. The minor release is
# the one tensorflow-text (pulled by keras-hub, the hub extra) pins: keras-hub 0.32 -> TensorFlow 2.21.
RUN pip install --no-cache-dir "tensorflow[and-cuda]>=2.21,<2.22"

COPY setup.py README.md /opt/featurize/
COPY pipeline /opt/featurize/pipeline
RUN pip install --no-cache-dir "/opt/featurize[hub]"

# Optional: bake ImageNet notop weights into the image (comma-separated backbone names),
# so a thousand workers do not each download them at start.
ENV KERAS_HOME=/opt/keras
ARG BAKE_WEIGHTS=""
RUN if [ -n "$BAKE_WEIGHTS" ]; then \
      python -c "import sys, keras; [getattr(keras.applications, n)(include_top=False, weights='imagenet') for n in sys.argv[1].split(',')]" "$BAKE_WEIGHTS"; \
    fi

ENTRYPOINT ["/opt/apache/beam/boot"]
