import shutil
import subprocess

import numpy as np
import pytest

from edgewise.optimization.report import write_outputs
from edgewise.optimization.run import optimize
from edgewise.optimization.search import Constraints, SearchSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (apt-get install chromium)")
def test_report_opens_in_headless_chromium_with_plots_visible(tmp_path, image_task):
    result = optimize(image_task, Constraints(max_drop=5.0),
                      SearchSettings(trials=4, trial_seconds=0.1, distill_epochs=1), final_seconds=0.2,
                      workdir=tmp_path / "work")
    out = write_outputs(result, tmp_path / "out")
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1400",
                    f"--screenshot={shot}", (out / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    import matplotlib.image
    pixels = (matplotlib.image.imread(shot)[..., :3] * 255).astype(int)
    red_star = np.all(np.abs(pixels - [0xE0, 0x31, 0x31]) < 30, axis=-1).sum()
    green_points = np.all(np.abs(pixels - [0x2B, 0x8A, 0x3E]) < 30, axis=-1).sum()
    assert red_star > 50 and green_points > 50, "the plots did not render"
