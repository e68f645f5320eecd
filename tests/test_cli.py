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


@pytest.fixture(scope="module")
def parquet_store(tmp_path_factory, zoo_folder, small_weights):
    from tests.test_store import featurize

    out = tmp_path_factory.mktemp("cli-store") / "out"
    featurize(zoo_folder, out, small_weights)
    return out


def test_search_by_key_prints_table_and_draws_grid(parquet_store, tmp_path, capsys):
    grid = tmp_path / "nn.png"
    assert main(["search", str(parquet_store), "--query", "rgb_png.png", "--k", "3", "--grid", str(grid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["rank", "score", "key", "uri"]
    first = lines[2].split()
    assert first[:3] == ["1", "1.000000", "rgb_png.png"] and len(lines) == 2 + 3 + 1
    from PIL import Image
    assert Image.open(grid).format == "PNG"


def test_search_by_image_embeds_it_with_the_store_model(parquet_store, zoo_folder, capsys):
    assert main(["search", str(parquet_store), "--query", str(zoo_folder / "a.b.c.jpg"), "--k", "1"]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row[2] == "a.b.c.jpg" and abs(float(row[1]) - 1.0) < 1e-4


def test_search_unknown_query_is_a_one_line_error(parquet_store, capsys):
    assert main(["search", str(parquet_store), "--query", "no-such-key"]) == 2
    assert "neither an image file nor a key" in capsys.readouterr().err


def test_inspect_summarises_counts_errors_and_files(parquet_store, capsys):
    assert main(["inspect", str(parquet_store)]) == 0
    out = capsys.readouterr().out
    assert "19 of 24 inputs; 5 errors" in out
    assert "DecompressionBombError" in out and "UnidentifiedImageError" in out
    assert "features/files-" in out and "manifest.json" in out
    assert "embedding" in out and "576" in out
