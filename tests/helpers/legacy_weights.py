"""Legacy Keras weights files written from a model, as each Keras version wrote them (nb_layers groups of
Keras 0.x/1, layer_names of Keras 1/2; Theano's flipped and channels-first kernels), and a seeded VGG16."""
import h5py
import numpy as np

SIZE = 32


def seeded_vgg16():
    """VGG16 notop at SIZE with seeded random weights (the `vgg_notop` fixture, tests/conftest.py)."""
    import keras

    keras.utils.set_random_seed(21)
    return keras.applications.VGG16(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3))



def weighted(model) -> list:
    return [layer for layer in model.layers if layer.weights]


def flattened_input(layer):
    """(H, W, C) of the map a Flatten feeds into this Dense layer, else None."""
    source = layer.input._keras_history[0]
    return tuple(source.input.shape[1:]) if type(source).__name__ == "Flatten" else None


def legacy_values(layer, theano_kernels: bool, channels_first: bool) -> list[np.ndarray]:
    """A layer's arrays as a Theano-era Keras saved them: kernels flipped (Theano convolves) and/or in
    (out, in, kh, kw) order, a Dense after a Flatten with its rows in (C, H, W) order."""
    values = [np.asarray(v) for v in layer.trainable_weights + layer.non_trainable_weights]
    out = []
    for value in values:
        if value.ndim == 4:
            if theano_kernels:
                value = value[::-1, ::-1]
            if channels_first:
                value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2 and channels_first and type(layer).__name__ == "Dense" and flattened_input(layer):
            height, width, channels = flattened_input(layer)
            value = value.reshape(height, width, channels, -1).transpose(2, 0, 1, 3).reshape(value.shape)
        out.append(np.ascontiguousarray(value))
    return out


def write_nb_layers(model, path, theano_kernels=False, channels_first=False) -> None:
    """Keras 0.x/1 Sequential.save_weights: every layer a group, nb_params arrays param_0, param_1, ..."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    with h5py.File(path, "w") as handle:
        handle.attrs["nb_layers"] = len(layers)
        for k, layer in enumerate(layers):
            group = handle.create_group(f"layer_{k}")
            values = legacy_values(layer, theano_kernels, channels_first) if layer.weights else []
            group.attrs["nb_params"] = len(values)
            for p, value in enumerate(values):
                group.create_dataset(f"param_{p}", data=value)


def write_layer_names(model, path, theano_kernels=False, channels_first=False, backend=None) -> None:
    """Keras 1/2 save_weights: layer_names, a group per layer listing its weight_names."""
    with h5py.File(path, "w") as handle:
        handle.attrs["layer_names"] = [layer.name.encode() for layer in model.layers]
        if backend:
            handle.attrs["backend"] = backend.encode()
        for layer in model.layers:
            group = handle.create_group(layer.name)
            values = legacy_values(layer, theano_kernels, channels_first) if layer.weights else []
            names = [f"{layer.name}_W_{i}".encode() for i in range(len(values))]
            group.attrs["weight_names"] = names
            for name, value in zip(names, values):
                group.create_dataset(name.decode(), data=value)
