"""The featurize command: exit codes and one-sentence errors; models listing; both entry points."""
import shutil
import subprocess
import sys

import pytest

from pipeline import backbones
from pipeline.cli import main


def test_models_lists_every_backbone_with_dims(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    body = lines[2:]
    assert len(body) == len(backbones.BACKBONES) == 40
    resnet = next(line for line in body if line.split()[0] == "ResNet50")
    assert "2048" in resnet and "caffe" in resnet and "224" in resnet


def test_models_layers_lists_shapes(capsys):
    assert main(["models", "VGG16", "--layers", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "block4_pool" in out and "2x2x512" in out


def failing_run(tmp_path, capsys, *argv):
    code = main(["run", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_unknown_layer_lists_valid_layers(tmp_path, capsys, zoo_folder):
    err = failing_run(tmp_path, capsys, "--input", str(zoo_folder), "--output", str(tmp_path / "o"),
                      "--model", "MobileNetV3Small", "--image-size", "32", "--weights", "none", "--layers", "nope")
    assert "layers 'nope'" in err and "expanded_conv_project_bn" in err


def test_input_that_does_not_exist(tmp_path, capsys):
    err = failing_run(tmp_path, capsys, "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"))
    assert f"input '{tmp_path / 'missing'}' matches no image files" in err


def test_input_with_zero_images(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    err = failing_run(tmp_path, capsys, "--input", str(tmp_path / "empty"), "--output", str(tmp_path / "o"))
    assert "matches no image files" in err
    err = failing_run(tmp_path, capsys, "--input", str(tmp_path / "s-{0..3}.tar"), "--output", str(tmp_path / "o"))
    assert "matches no tar shards" in err
    assert not (tmp_path / "o").exists(), "a refused run must not start writing"


def test_unknown_command_is_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "usage: featurize" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["featurize"], [sys.executable, "-m", "pipeline"]])
def test_entry_points(command):
    if command == ["featurize"]:
        assert shutil.which("featurize"), "console script not installed: pip install -e ."
    done = subprocess.run([*command, "run", "--input", "x", "--output", "y", "--model", "Nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("featurize: error: model 'Nope'")
