"""Every shipped preset (configs/*.yaml) runs: a dry run of each over the sample images lists them all and
plans their units, exactly as `featurize run --config PRESET --dry-run` would, loading no model."""
import glob
import pathlib

import pytest

from pipeline.job.launch import run

SAMPLES = pathlib.Path(__file__).resolve().parents[2] / "samples" / "shapes"


@pytest.mark.parametrize("preset", sorted(glob.glob(str(SAMPLES.parents[1] / "configs" / "*.yaml"))),
                         ids=lambda path: pathlib.Path(path).stem)
def test_each_shipped_preset_dry_runs_over_the_samples(preset, tmp_path):
    images = sorted(path for path in SAMPLES.rglob("*") if path.is_file())
    report = run(["--config", preset, "--input", str(SAMPLES), "--output", str(tmp_path / "out"), "--dry-run"])
    assert report["dry_run"] and report["layout"] == "files" and report["inputs"] == len(images)
    assert sum(unit["inputs"] for unit in report["units"]) == report["pending_inputs"] == len(images)
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
