"""The README's "Retrieval models" commands, run as a new user types them from a fresh folder (no network):
a tiny CLIP preset written by keras-hub's save_to_preset, a run on the sample set, a text search."""
import json
import pathlib
import re
import shlex
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq

REPO = pathlib.Path(__file__).resolve().parents[2]


def readme_commands() -> list[str]:
    section = (REPO / "README.md").read_text().split("## Retrieval models (keras-hub)", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    return [line for line in block.strip().splitlines() if line.strip()]


def test_readme_hub_commands_run_offline_and_search_by_text(tmp_path):
    install, *commands = readme_commands()
    # The install line is the hub extra, which the test extra holds (setup.py): its keras-hub is this one.
    assert install == "pip install 'featurize[hub]'"
    assert [c.split()[:2] for c in commands] == [["python", "samples/make_tiny_preset.py"], ["featurize", "run"],
                                                 ["featurize", "search"]]
    (tmp_path / "samples").symlink_to(REPO / "samples")
    bin_dir = pathlib.Path(sys.executable).parent
    outputs = []
    for command in commands:
        argv = shlex.split(command)
        argv[0] = sys.executable if argv[0] == "python" else str(bin_dir / argv[0])
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, (command, done.stderr[-3000:])
        outputs.append(done.stdout)
    store = tmp_path / "out-clip"
    table = pq.read_table(store / "features")
    assert table.num_rows == 36 and table.schema.field("embedding").type.list_size == 24  # the tiny CLIP's joint space
    assert np.isfinite(np.asarray(table["embedding"].to_pylist())).all()
    lines = outputs[2].splitlines()
    assert lines[0].split() == ["rank", "score", "key", "uri"] and len(lines) == 2 + 5
    fingerprint = json.loads((store / "manifest.json").read_text())["fingerprint"]
    assert fingerprint["backbone"] == f"hub:{tmp_path / 'tiny-clip'}"  # the folder made absolute
    keys = set(table["key"].to_pylist())
    assert all(line.split()[2] in keys for line in lines[2:])


def test_the_tiny_preset_script_without_keras_hub_names_the_extra_to_install(tmp_path):
    """A plain `pip install .` has no keras-hub: the README's first hub command says what to install, not a
    traceback (keras_hub hidden from the import system here)."""
    script = REPO / "samples" / "make_tiny_preset.py"
    hide = (f"import runpy, sys; sys.modules['keras_hub'] = None; sys.argv = ['make_tiny_preset.py', 'tiny-clip/']; "
            f"runpy.run_path({str(script)!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", hide], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith("make_tiny_preset.py needs keras_hub: pip install 'featurize[hub]'"), done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "tiny-clip").exists()
