"""Configuration: presets, flag precedence, validation messages."""
import argparse
import glob

import pytest

from pipeline.config import ConfigError, RunConfig, add_run_arguments, input_size, parse_image_size, resolve
from pipeline.job import output_dims


def parse(*argv):
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return resolve(parser.parse_args(list(argv)))


def test_defaults():
    config = parse("--input", "in", "--output", "out")
    assert config == RunConfig(input="in", output="out")
    assert input_size(config) == (224, 224)


def test_flags_win_over_preset(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("model: VGG16\npooling: max\nimage-size: 128\nbatch_size: 8\njpeg-draft: false\n")
    config = parse("--input", "in", "--output", "out", "--config", str(preset), "--pooling", "avg,gem")
    assert config.model == "VGG16" and config.image_size == (128, 128) and config.batch_size == 8
    assert config.pooling == ("avg", "gem") and config.jpeg_draft is False


def test_repeated_poolings_and_layers_are_one_output_each():
    config = parse("--input", "in", "--output", "out", "--pooling", "avg,max,avg", "--layers", "a, b,a")
    assert config.pooling == ("avg", "max") and config.layers == ("a", "b")


def test_preset_numbers_are_checked(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("batch-size: '64'\ngem-p: 2\n")
    config = parse("--input", "in", "--output", "out", "--config", str(preset))
    assert config.batch_size == 64 and config.gem_p == 2.0
    preset.write_text("batch-size: lots\n")
    with pytest.raises(ConfigError, match="batch_size 'lots' is not a whole number"):
        parse("--input", "in", "--output", "out", "--config", str(preset))
    preset.write_text("l2-normalize: yes please\n")
    with pytest.raises(ConfigError, match="l2_normalize 'yes please' must be true or false"):
        parse("--input", "in", "--output", "out", "--config", str(preset))


@pytest.mark.parametrize("text, size", [("224", (224, 224)), ("240x320", (240, 320)), ([96, 64], (96, 64))])
def test_image_size_forms(text, size):
    assert parse_image_size(text) == size


@pytest.mark.parametrize("preset", sorted(glob.glob("configs/*.yaml")))
def test_shipped_presets_are_valid(preset):
    config = parse("--input", "in", "--output", "out", "--config", preset)
    dims = output_dims(config)
    assert all(dim > 0 for dim in dims.values())


def test_vgg16_block5_max_preset_is_512_max():
    config = parse("--input", "in", "--output", "out", "--config", "configs/vgg16-block5-max.yaml")
    assert config.layers == ("block5_pool",) and config.pooling == ("max",)
    assert output_dims(config) == {"embedding": 512}


def test_several_outputs_are_named_layer_slash_pooling():
    config = parse("--input", "in", "--output", "out", "--model", "VGG16", "--image-size", "64",
                   "--layers", "block4_pool,block5_pool", "--pooling", "avg,max")
    assert output_dims(config) == {"block4_pool/avg": 512, "block4_pool/max": 512,
                                   "block5_pool/avg": 512, "block5_pool/max": 512}


@pytest.mark.parametrize("argv, fragments", [
    (["--model", "ResNet5"], ["model 'ResNet5'", "ResNet50"]),
    (["--pooling", "mean"], ["pooling 'mean'", "avg, max, gem"]),
    (["--model", "InceptionV3", "--image-size", "32"], ["image_size 32x32", "75"]),
    (["--weights", "/nowhere/w.h5"], ["weights '/nowhere/w.h5' does not exist"]),
    (["--resize", "stretch"], ["resize 'stretch'", "squash, center-crop, pad"]),
    (["--interpolation", "cubic"], ["interpolation 'cubic'", "bicubic"]),
    (["--format", "csv"], ["format 'csv'", "parquet, hdf5"]),
    (["--batch-size", "0"], ["batch_size 0"]),
    (["--image-size", "big"], ["image_size 'big'"]),
])
def test_invalid_values_name_field_value_and_what_is_valid(argv, fragments):
    with pytest.raises(ConfigError) as caught:
        parse("--input", "in", "--output", "out", *argv)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_unknown_preset_field(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("modle: VGG16\n")
    with pytest.raises(ConfigError, match="unknown field 'modle'.*did you mean 'model'"):
        parse("--input", "in", "--output", "out", "--config", str(preset))


def test_missing_input():
    with pytest.raises(ConfigError, match="input is missing"):
        parse("--output", "out")
