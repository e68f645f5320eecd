"""Configuration: presets, flag precedence, validation messages."""
import argparse
import dataclasses
import glob

import pytest

from pipeline.job.config import FIELDS, ConfigError, RunConfig, flag_name, input_size, load_preset, parse_image_size, resolve
from pipeline.job.runner import add_run_arguments, parse_run_args
from pipeline.job.identity import output_dims


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
    (["--unit-size", "0"], ["unit_size 0 must be at least 1"]),
    (["--unit-size", "many"], ["unit_size 'many' is not a whole number"]),
    (["--tf-threads", "0"], ["tf_threads 0"]),
    (["--max-error-rate", "5"], ["max_error_rate 5.0 must be a fraction from 0 to below 1"]),
    (["--resize-in", "gpu"], ["resize_in 'gpu' is not valid", "host, model"]),
    (["--resize-in", "model", "--interpolation", "nearest"],
     ["interpolation 'nearest' cannot be combined with resize_in 'model'", "resize_in host"]),
    # a .keras file is a whole serialised model (it can carry code): featurize only loads weights
    (["--weights", "model.keras"], ["weights 'model.keras' is not valid", ".h5 / .weights.h5"]),
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


def parser_with_run_arguments():
    parser = argparse.ArgumentParser()
    add_run_arguments(parser)
    return parser


def test_each_field_is_declared_once_as_one_flag_and_one_preset_key(tmp_path):
    fields = dataclasses.fields(RunConfig)
    actions = [a for a in parser_with_run_arguments()._actions if a.dest not in ("help", "config")]
    assert sorted(a.dest for a in actions) == sorted(FIELDS)  # one flag per field, no flag without a field
    assert all(len(a.option_strings) == 1 for a in actions)
    assert {a.dest: a.option_strings[0] for a in actions} == {f.name: flag_name(f) for f in fields}
    assert {a.dest: a.help for a in actions} == {f.name: f.metadata["help"] for f in fields}
    flags = {a.option_strings[0] for a in actions}
    assert {"--gem-p", "--l2-normalize", "--no-jpeg-draft", "--no-progress", "--resume", "--dry-run",
            "--unit-size"} <= flags
    preset = tmp_path / "every-field.yaml"
    preset.write_text("".join(f"{name.replace('_', '-') if i % 2 else name}: null\n"
                              for i, name in enumerate(sorted(FIELDS))))
    assert set(load_preset(str(preset))) == FIELDS


def test_booleans_are_switches_that_keep_a_preset_value_unless_given(tmp_path):
    preset = tmp_path / "p.yaml"
    preset.write_text("progress: false\nresume: true\n")
    config, _ = parse_run_args(["--input", "in", "--output", "out", "--config", str(preset)])
    assert config.progress is False and config.resume is True and config.jpeg_draft is True
    config, _ = parse_run_args(["--input", "in", "--output", "out", "--no-jpeg-draft", "--l2-normalize"])
    assert config.jpeg_draft is False and config.l2_normalize is True and config.progress is True


def test_new_options_parse_and_validate(tmp_path):
    config, beam_args = parse_run_args(["--input", "in", "--output", "out"])
    assert (config.resume, config.dry_run, config.unit_size) == (False, False, 1000) and beam_args == []
    config, beam_args = parse_run_args(["--input", "in", "--output", "out",
                                        "--resume", "--dry-run", "--unit-size", "50"])
    assert (config.resume, config.dry_run, config.unit_size) == (True, True, 50) and beam_args == []
    preset = tmp_path / "p.yaml"
    preset.write_text("dry-run: true\nunit_size: '7'\n")
    config, _ = parse_run_args(["--input", "in", "--output", "out", "--config", str(preset)])
    assert config.dry_run is True and config.unit_size == 7
    preset.write_text("unit-size: 0\n")
    with pytest.raises(ConfigError, match="unit_size 0 must be at least 1"):
        parse_run_args(["--input", "in", "--output", "out", "--config", str(preset)])


def test_resume_and_overwrite_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="^resume and overwrite exclude each other; "):
        parse_run_args(["--input", "in", "--output", "out", "--resume", "--overwrite"])
    preset = tmp_path / "p.yaml"
    preset.write_text("overwrite: true\n")
    with pytest.raises(ConfigError, match="^resume and overwrite exclude each other; "):
        parse_run_args(["--input", "in", "--output", "out", "--config", str(preset), "--resume"])


@pytest.mark.parametrize("argv, suggestion", [
    (["--max-error-rat", "0.1"], "--max-error-rate"),
    (["--batchsize", "8"], "--batch-size"),
    (["--batch", "8"], "--batch-size"),  # no abbreviations: only full names, as Beam
    (["--max-pixel=5"], "--max-pixels"),
    (["--inptu", "x"], "--input"),
    (["--direct-num-workers", "2"], "--direct_num_workers"),  # Beam's own flags are suggested too
    (["--runner=FnApiRunner", "--zebra", "5"], None),
])
def test_unknown_flags_are_refused_with_did_you_mean(argv, suggestion):
    with pytest.raises(ConfigError) as caught:
        parse_run_args(["--input", "in", "--output", "out", *argv])
    message = str(caught.value)
    unknown = next(a for a in argv if not a.startswith("--runner")).split("=")[0]
    assert message.startswith(f"option {unknown!r} is neither a featurize option nor an Apache Beam pipeline option")
    assert message.endswith("; run `featurize run --help` for featurize's options") and "\n" not in message
    if suggestion:
        assert f"(did you mean {suggestion!r}?)" in message


@pytest.mark.parametrize("argv, stray", [(["photos/"], "photos/"), (["--overwrite", "yes"], "yes"),
                                         (["--direct_num_workers", "2", "3"], "3")])
def test_stray_words_are_refused(argv, stray):
    with pytest.raises(ConfigError, match=f"^argument '{stray}' is neither an option nor the value of one; "):
        parse_run_args(["--input", "in", "--output", "out", *argv])


def test_a_flag_given_twice_with_different_values_is_refused_instead_of_keeping_the_last():
    with pytest.raises(ConfigError, match=r"^--input is given twice \('a/' and 'b/'\); featurize reads one input, so "
                                          r"give one glob over several folders \('\{a,b\}/' or 'data/\*/'\) or a path list$"):
        parse_run_args(["--input", "a/", "--output", "out", "--input", "b/"])
    with pytest.raises(ConfigError, match=r"^--batch-size is given twice \('8' and '16'\); it takes one value$"):
        parse_run_args(["--input", "in", "--output", "out", "--batch-size", "8", "--batch-size=16"])
    # The same value twice (a script that appends flags) loses nothing.
    config, _ = parse_run_args(["--input", "in", "--output", "out", "--batch-size", "8", "--batch-size", "8"])
    assert config.batch_size == 8


BEAM_ARGS = [("--runner", "FnApiRunner"), ("--direct_num_workers", "2"), ("--job_endpoint", "localhost:8099"),
             ("--environment_type", "EXTERNAL"), ("--setup_file", "./setup.py"), ("--project", "x"),
             ("--temp_location", "gs://b/t"), ("--experiments", "no_use_multiple_sdk_containers"),
             ("--dataflow_service_options", "worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"),
             ("--sdk_container_image", "registry.example/featurize-worker:0.1.0")]


@pytest.mark.parametrize("form", ["--flag value", "--flag=value"])
def test_beam_options_pass_through_and_are_returned_for_beam(form):
    beam = [arg for name, value in BEAM_ARGS
            for arg in ([name, value] if form == "--flag value" else [f"{name}={value}"])] + ["--no_auth"]
    config, beam_args = parse_run_args(["--input", "in", *beam[:4], "--output", "out", *beam[4:]])
    assert config == RunConfig(input="in", output="out")
    assert beam_args == beam


def test_featurize_and_beam_dry_run_are_different_flags():
    config, beam_args = parse_run_args(["--input", "in", "--output", "out", "--dry-run", "--dry_run=True"])
    assert config.dry_run is True and beam_args == ["--dry_run=True"]


def test_beam_options_are_read_from_beam_itself():
    from apache_beam.options.pipeline_options import PipelineOptions

    class FeaturizeTestOptions(PipelineOptions):  # any options class, e.g. a runner's, is known once imported
        @classmethod
        def _add_argparse_args(cls, parser):
            parser.add_argument("--featurize_test_knob", type=int)

    _, beam_args = parse_run_args(["--input", "in", "--output", "out", "--featurize_test_knob", "3"])
    assert beam_args == ["--featurize_test_knob", "3"]
    with pytest.raises(ConfigError, match="did you mean '--featurize_test_knob'"):
        parse_run_args(["--input", "in", "--output", "out", "--featurize_test_knb", "3"])
    with pytest.raises(ConfigError, match="^Apache Beam argument --featurize_test_knob: invalid int value: 'x'$"):
        parse_run_args(["--input", "in", "--output", "out", "--featurize_test_knob", "x"])


@pytest.mark.parametrize("argv, message", [
    (["--layers", "block4_pool"], "layers block4_pool cannot be combined with --predictions, whose embedding is the "
                                  "classifier's input; drop --layers or --predictions"),
    (["--pooling", "max"], "pooling max cannot be combined with --predictions, whose embedding is the classifier's "
                           "input after the model's own pooling; use avg (the default) or drop --predictions"),
    (["--image-size", "160"], "image_size 160x160 does not fit VGG16's classifier, which flattens its feature map; "
                              "use 224 (the default) with --predictions"),
])
def test_predictions_refuse_what_the_classifier_cannot_give(argv, message):
    with pytest.raises(ConfigError) as caught:
        parse("--input", "in", "--output", "out", "--model", "VGG16", "--predictions", "5", *argv)
    assert str(caught.value) == message


def test_predictions_embedding_is_the_classifier_input():
    assert output_dims(parse("--input", "in", "--output", "out", "--model", "VGG16", "--predictions", "5")) == \
        {"embedding": 4096}
    # a global-pooling head runs at any size, L2 normalisation applies to the embedding
    config = parse("--input", "in", "--output", "out", "--model", "MobileNetV3Small", "--predictions", "3",
                   "--image-size", "96", "--l2-normalize")
    assert output_dims(config) == {"embedding": 1024}


def test_weights_ordering_is_for_legacy_files_only(tmp_path):
    keras3 = tmp_path / "model.weights.h5"
    keras3.write_bytes(b"x")
    for weights in ("imagenet", str(keras3)):
        with pytest.raises(ConfigError) as caught:
            parse("--input", "in", "--output", "out", "--weights", weights, "--weights-ordering", "th")
        assert str(caught.value) == (f"weights_ordering 'th' applies to legacy .h5 weights files only, not to "
                                     f"weights {weights!r}; drop --weights-ordering")
    legacy = tmp_path / "vgg16_weights.h5"
    legacy.write_bytes(b"x")
    assert parse("--input", "in", "--output", "out", "--weights", str(legacy), "--weights-ordering", "th"
                 ).weights_ordering == "th"
