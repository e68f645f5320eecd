"""The featurize command: exit codes and one-sentence errors; models listing; both entry points."""
import shutil
import signal
import subprocess
import sys

import pytest

from pipeline.model import backbones
from pipeline.cli import main
from tests.helpers.crash import scratch_left


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


def test_models_hub_lists_the_families_and_every_builtin_preset_of_them(capsys):
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    from pipeline.model.hub import FAMILIES

    assert main(["models", "--hub"]) == 0
    out = capsys.readouterr().out
    listed = {line.split()[0] for line in out.splitlines() if line.startswith("hub:")}
    expected = {f"hub:{name}" for name in BUILTIN_PRESETS if any(name.startswith(f.name) for f in FAMILIES)}
    assert listed == expected and "hub:siglip2_base_patch16_224" in listed and "hub:dinov3_vit_small_lvd1689m" in listed
    siglip2 = next(line for line in out.splitlines() if line.startswith("hub:siglip2_base_patch16_224 "))
    assert siglip2.split()[1:] == ["siglip", "375M", "224", "yes"]
    for family in FAMILIES:
        assert any(line.split()[:2] == [family.name, family.backbone_class] for line in out.splitlines())


def test_a_missing_hub_extra_is_one_sentence(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "keras_hub", None)  # as if featurize[hub] were not installed
    assert main(["run", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--model",
                 "hub:clip_vit_base_patch16"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("featurize: error: featurize run needs keras_hub: pip install 'featurize[hub]'")
    assert len(err.splitlines()) == 1


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


ENTRY_POINTS = [["featurize"], [sys.executable, "-m", "pipeline"]]


@pytest.mark.parametrize("command", ENTRY_POINTS, ids=["console-script", "python-m"])
def test_entry_points(command):
    if command == ["featurize"]:
        assert shutil.which("featurize"), "console script not installed: pip install -e ."
    done = subprocess.run([*command, "run", "--input", "x", "--output", "y", "--model", "Nope"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("featurize: error: model 'Nope'")


def native_teardown_aborts(tmp_path) -> str:
    """A PYTHONPATH folder whose sitecustomize registers abort() as C++ registers static destructors
    (__cxa_atexit): it runs after Python's own exit work, where the teardown of Arrow's thread pools
    sometimes aborts a process whose work is done (apache/arrow#34314)."""
    return sitecustomize_folder(tmp_path / "abort-at-exit", "import ctypes\n"
                                                            "libc = ctypes.CDLL(None)\n"
                                                            "libc.__cxa_atexit(libc.abort, None, None)\n")


def sitecustomize_folder(folder, source: str) -> str:
    """A folder for PYTHONPATH whose sitecustomize.py (`source`) every Python started with it runs first."""
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(source)
    return str(folder)


def call(command, tmp_path, *argv, timeout=300, **env):
    return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, timeout=timeout,
                          env=quiet_env(tmp_path, **env), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("command", ENTRY_POINTS, ids=["console-script", "python-m"])
def test_the_exit_status_is_the_command_s_whatever_native_teardown_does(command, tmp_path):
    aborts = native_teardown_aborts(tmp_path)
    control = call([sys.executable, "-c", "print('done')"], tmp_path, PYTHONPATH=aborts)
    assert (control.returncode, control.stdout) == (-signal.SIGABRT, "done\n")  # the stub does abort

    helped = call(command, tmp_path, "--help", PYTHONPATH=aborts)
    assert helped.returncode == 0 and helped.stdout.startswith("usage: featurize"), helped.stderr
    refused = call(command, tmp_path, "run", "--input", tmp_path / "missing", "--output", tmp_path / "o",
                   PYTHONPATH=aborts)
    assert refused.returncode == 2 and refused.stderr.startswith("featurize: error: input "), refused.stderr
    usage = call(command, tmp_path, "inspect", PYTHONPATH=aborts)  # argparse's own exit
    assert usage.returncode == 2 and "the following arguments are required: store" in usage.stderr


def test_a_finished_run_exits_0_whatever_native_teardown_does(zoo_folder, tmp_path):
    """A run that wrote Parquet (Arrow's thread pools started) ends 0, its summary printed, no scratch left."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = call(["featurize"], tmp_path, "run", "--input", zoo_folder, "--output", tmp_path / "out", "--model",
                "MobileNetV3Small", "--weights", "none", "--image-size", 48, "--no-progress",
                PYTHONPATH=native_teardown_aborts(tmp_path), TMPDIR=str(scratch))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("featurize: 20 feature rows, 4 error rows from 24 inputs")
    assert (tmp_path / "out" / "manifest.json").exists()
    assert scratch_left(scratch) == []


@pytest.fixture(scope="module")
def parquet_store(tmp_path_factory, zoo_folder, small_weights):
    from tests.helpers.runs import featurize

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


def test_search_by_image_embeds_it_with_the_store_model_quietly(parquet_store, zoo_folder, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline", "search", str(parquet_store), "--query",
                           str(zoo_folder / "a.b.c.jpg"), "--k", "1"], capture_output=True, text=True, timeout=300,
                          env=quiet_env(tmp_path), stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stderr == ""  # TensorFlow's start-up lines went to the log
    row = done.stdout.splitlines()[2].split()
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


def quiet_env(tmp_path, **extra):
    """The environment of a user who set nothing: no TF_CPP_MIN_LOG_LEVEL, empty Keras and featurize caches."""
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "FEATURIZE_VERBOSE")}
    env.update(KERAS_HOME=str(tmp_path / "keras-home"), FEATURIZE_CACHE=str(tmp_path / "featurize-cache"), **extra)
    return env


def featurize(tmp_path, *argv, timeout=300, **env):
    return call([sys.executable, "-m", "pipeline", "run"], tmp_path, *argv, timeout=timeout, **env)


def test_offline_imagenet_is_one_sentence_before_any_worker(zoo_folder, tmp_path):
    """This machine has no internet: the README's first command must say so in one line, exit 2, write nothing."""
    done = featurize(tmp_path, "--input", zoo_folder, "--output", tmp_path / "out", "--model", "MobileNetV3Small")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("featurize: error: weights imagenet for MobileNetV3Small could not be downloaded from "
                           "https://storage.googleapis.com/"), line
    assert "--weights FILE" in line and "--weights none" in line
    assert not (tmp_path / "out").exists()


def test_offline_predictions_without_a_class_index_are_one_sentence(zoo_folder, tmp_path):
    done = featurize(tmp_path, "--input", zoo_folder, "--output", tmp_path / "out", "--model", "MobileNetV3Small",
                     "--predictions", "5")
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("featurize: error: predictions need ImageNet's class names, and imagenet_class_index.json "
                           "is not in Keras's cache and could not be downloaded"), line
    assert line.endswith("pass --class-index FILE with a copy of that file") and not done.stdout
    assert not (tmp_path / "out").exists()


def test_weights_that_do_not_fit_are_refused_naming_the_first_layer(zoo_folder, small_weights, tmp_path):
    done = featurize(tmp_path, "--input", zoo_folder, "--output", tmp_path / "out", "--model", "ResNet50",
                     "--weights", small_weights, "--image-size", 64)
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"featurize: error: weights '{small_weights}' do not fit ResNet50 at 64x64 (")
    assert "conv1_conv" in line and "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_a_worker_that_cannot_load_the_model_fails_the_run_with_the_same_sentence(zoo_folder, small_weights, tmp_path,
                                                                                   monkeypatch):
    """What a cluster worker says when the launcher could not check first (the check is skipped here)."""
    from pipeline.job.launch import run
    from pipeline.logs import RunFailed

    monkeypatch.setattr("pipeline.job.launch.check_model_before_workers", lambda spec, options: None)
    with pytest.raises(RunFailed) as failure:
        run(["--input", str(zoo_folder), "--output", str(tmp_path / "out"), "--model", "ResNet50", "--weights",
             small_weights, "--image-size", "64", "--direct_running_mode=in_memory", "--no-progress"])
    assert failure.value.sentence.startswith(f"weights '{small_weights}' do not fit ResNet50 at 64x64 (")
    assert "Traceback" in open(failure.value.log_path).read()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_run_is_quiet_unless_verbose(zoo_folder, small_weights, tmp_path):
    args = ["--input", zoo_folder, "--model", "MobileNetV3Small", "--weights", small_weights, "--image-size", 48,
            "--batch-size", 8, "--max-pixels", 1_000_000]
    # quiet: the launcher and two TensorFlow worker processes, and not a line of theirs on the terminal
    done = featurize(tmp_path, *args, "--direct_num_workers=2", "--direct_running_mode=multi_processing",
                     "--output", tmp_path / "quiet")
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if not line.startswith("featurize: ")]
    assert not noise, "\n".join(noise)
    assert done.stdout.startswith("featurize: 19 feature rows, 5 error rows from 24 inputs")
    [log] = (tmp_path / "quiet" / "_featurize" / "logs").iterdir()
    assert "oneDNN" in log.read_text() or "cuda" in log.read_text()  # TensorFlow's lines went to the log
    # --verbose: TensorFlow's lines reach the terminal. One process suffices (in_memory): the switches --verbose
    # sets (FEATURIZE_VERBOSE for the model handler, no stderr redirection) are the same for workers, which
    # inherit them, and two more worker processes would import TensorFlow for nothing.
    loud = featurize(tmp_path, *args, "--direct_running_mode=in_memory", "--output", tmp_path / "loud", "--verbose")
    assert loud.returncode == 0 and ("oneDNN" in loud.stderr or "cuda" in loud.stderr), loud.stderr[-2000:]


def test_error_rate_guard_stops_the_run_with_one_sentence_and_no_manifest(zoo_folder, small_weights, tmp_path, capsys):
    code = main(["run", "--input", str(zoo_folder), "--output", str(tmp_path / "out"), "--model", "MobileNetV3Small",
                 "--weights", small_weights, "--image-size", "48", "--batch-size", "8", "--max-pixels", "1000000",
                 "--max-error-rate", "0.1", "--direct_running_mode=in_memory", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 2, err
    assert err[0].startswith("featurize: error: 20.8% of 24 inputs are error rows, more than --max-error-rate 0.1; "
                             "most common: decode "), err[0]
    assert err[1].startswith("featurize: the full log is in ") and err[1].endswith(".log")
    assert not (tmp_path / "out" / "manifest.json").exists()
    # the same errors under a generous rate: a manifest, and a warning in the summary (20.8% > 10%)
    assert main(["run", "--input", str(zoo_folder), "--output", str(tmp_path / "out"), "--model", "MobileNetV3Small",
                 "--weights", small_weights, "--image-size", "48", "--batch-size", "8", "--max-pixels", "1000000",
                 "--max-error-rate", "0.5", "--resume", "--direct_running_mode=in_memory", "--no-progress"]) == 0
    assert "featurize: warning: 21% of the inputs are error rows; most common: decode" in capsys.readouterr().err


def chatter_stub(tmp_path):
    """A PYTHONPATH folder whose sitecustomize hides apitools, as in a venv where apache-beam[gcp] lacks it:
    Beam then logs `apitools not found, and bigquery client libraries are not available` on import."""
    return sitecustomize_folder(tmp_path / "no-apitools", "import sys\nsys.modules['apitools'] = None\n")


APITOOLS = "apitools not found, and bigquery client libraries are not available"


@pytest.mark.parametrize("tf_log_level", [None, "0", "2", "3"])
def test_tf_log_level_changes_no_line_on_the_terminal(tf_log_level, zoo_folder, tmp_path):
    """TF_CPP_MIN_LOG_LEVEL is TensorFlow's own filter: whatever its value, a failing run prints its sentence
    and the log's path, a finished run its summary, and nothing else; libraries' import-time chatter and
    TensorFlow's lines go to the run's log."""
    env = {"PYTHONPATH": chatter_stub(tmp_path)}
    if tf_log_level is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = tf_log_level
    args = ["--input", zoo_folder, "--model", "MobileNetV3Small", "--weights", "none", "--image-size", 48,
            "--batch-size", 8, "--max-pixels", 1_000_000, "--direct_running_mode=in_memory", "--no-progress"]
    failed = featurize(tmp_path, *args, "--output", tmp_path / "failed", "--max-error-rate", 0.1, **env)
    assert failed.returncode == 1, failed.stderr
    sentence, where = failed.stderr.strip().splitlines()
    assert sentence.startswith("featurize: error: 20.8% of 24 inputs are error rows, more than --max-error-rate")
    assert where.startswith("featurize: the full log is in ") and not failed.stdout
    log = open(where.removeprefix("featurize: the full log is in ")).read()
    assert APITOOLS in log and "Traceback" in log

    done = featurize(tmp_path, *args, "--output", tmp_path / "done", **env)
    assert done.returncode == 0, done.stderr
    noise = [line for line in done.stderr.splitlines() if not line.startswith("featurize: ")]
    assert not noise, "\n".join(noise)
    assert done.stdout.startswith("featurize: 19 feature rows, 5 error rows from 24 inputs")
    [log] = (tmp_path / "done" / "_featurize" / "logs").iterdir()
    assert APITOOLS in log.read_text()


def test_import_time_chatter_of_other_commands_goes_to_the_log(parquet_store, tmp_path):
    env = quiet_env(tmp_path, PYTHONPATH=chatter_stub(tmp_path), TMPDIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-m", "pipeline", "inspect", str(parquet_store)], capture_output=True,
                          text=True, timeout=120, env=env, stdin=subprocess.DEVNULL)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "19 of 24 inputs" in done.stdout
    # inspect reads a local store without Beam, so Beam's import-time chatter never happens there; a run
    # loads Beam, and its chatter goes to the log, never to the terminal (below, and quiet runs above).
    refused = featurize(tmp_path, "--input", tmp_path / "missing", "--output", tmp_path / "o",
                        PYTHONPATH=chatter_stub(tmp_path))
    assert refused.returncode == 2
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("featurize: error: input ")
    # --verbose shows what other libraries log
    loud = featurize(tmp_path, "--input", tmp_path / "missing", "--output", tmp_path / "o", "--verbose",
                     PYTHONPATH=chatter_stub(tmp_path))
    assert APITOOLS in loud.stderr


@pytest.mark.parametrize("command, module, extra", [("index", "faiss", "index"), ("serve", "uvicorn", "serve"),
                                                     ("serve", "starlette", "serve")])
@pytest.mark.parametrize("how", ["absent", "broken"])
def test_a_missing_extra_is_one_sentence_naming_it(command, module, extra, how, parquet_store, tmp_path):
    """No uninstalling: a sitecustomize hides the module (absent), or a stub of it fails to import (broken)."""
    folder = tmp_path / "stubs"
    folder.mkdir()
    if how == "absent":
        (folder / "sitecustomize.py").write_text(f"import sys\nsys.modules[{module!r}] = None\n")
    else:
        (folder / f"{module}.py").write_text("raise ImportError('libstdc++.so.6: version GLIBCXX_3.4.32 not found')\n")
    flags = ["--factory", "IVF2,Flat"] if command == "index" else ["--port", "0"]  # IVF: an index that needs faiss
    done = subprocess.run([sys.executable, "-m", "pipeline", command, str(parquet_store), *flags],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                          env=quiet_env(tmp_path, PYTHONPATH=str(folder)))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"featurize: error: featurize {command} needs {module}: pip install 'featurize[{extra}]' ("), line
    assert not done.stdout


@pytest.mark.parametrize("command", ["inspect", "--help"])
def test_a_reader_that_stops_early_gets_no_traceback(command, parquet_store, tmp_path):
    """`featurize inspect out/ | head -1`: the pipe closes before featurize writes; it exits 0, quietly."""
    argv = [command, str(parquet_store)] if command == "inspect" else [command]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=quiet_env(tmp_path), stdin=subprocess.DEVNULL)
    proc.stdout.close()  # the reader is gone before the first line
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 0 and stderr == "", stderr
