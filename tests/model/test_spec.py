"""The weights value's one rule: as typed or stored -> ModelSpec.weights, and back to what a store holds."""
import os

from pipeline.model.spec import stored_weights, weights_argument


def test_weights_argument():
    assert weights_argument("imagenet") == "imagenet"
    for none in ("none", "None", "", None):
        assert weights_argument(none) is None
    assert weights_argument("/m/resnet.weights.h5") == "/m/resnet.weights.h5"
    assert weights_argument("/m/resnet50_notop.h5") == "/m/resnet50_notop.h5"


def test_a_path_is_expanded_and_never_checked():
    assert weights_argument(" ~/m/resnet.weights.h5 ") == os.path.expanduser("~/m/resnet.weights.h5")
    assert weights_argument("gs://bucket/absent.weights.h5") == "gs://bucket/absent.weights.h5"
    assert weights_argument("IMAGENET") == "imagenet" and weights_argument("null") is None


def test_stored_weights_read_back_as_the_spec_had_them():
    assert stored_weights(None) == "none" and stored_weights("imagenet") == "imagenet"
    for weights in (None, "imagenet", "/m/resnet.weights.h5", "gs://bucket/resnet.weights.h5"):
        assert weights_argument(stored_weights(weights)) == weights
