"""Training curves from metrics.jsonl: the current timeline across resumes, the summary line, the PNG."""

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from easyanimate import curves

REPO_ROOT = Path(__file__).resolve().parents[1]


def write_metrics(output, records, tail=""):
    path = output / "logs" / "metrics.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail)
    return path


def record(step, loss, start=False, **extra):
    return {"step": step, "loss": loss, "lr": 1e-4, "samples_per_s": 2.0, **({"attempt_start": 1} if start else {}),
            **extra}


def test_a_resume_keeps_the_newest_values_and_marks_where_the_attempt_started(tmp_path):
    # Attempt 1 logs steps 1-5, its last checkpoint is step 3; attempt 2 redoes 4-5 and goes on to 7.
    records = [record(s, 1.0, start=s == 1) for s in range(1, 6)] + \
              [record(s, 0.5, start=s == 4) for s in range(4, 8)]
    built = curves.build_curves(records)
    assert built.steps == list(range(1, 8))
    assert built.series["loss"] == [1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5]
    assert built.attempt_starts == [4]
    assert built.series["loss_smoothed"][0] == 1.0 and built.series["loss_smoothed"][3] < 1.0


def test_summary_states_step_loss_speed_and_eta():
    last = record(120, 0.41, loss_smoothed=0.43, s_per_step=1.9, samples_per_s=4.2, eta_s=1860)
    line = curves.summary_line(curves.build_curves([last]))
    assert line == "last logged step 120, loss 0.41 (smoothed 0.43), 1.9 s/step, 4.2 samples/s, ETA 0:31:00"
    assert curves.summary_line(curves.build_curves([])) == "no training step logged yet"


def test_plot_command_writes_a_png_and_prints_the_loss_skipping_a_cut_last_line(tmp_path):
    records = [record(s, 1.0 / s, start=s in (1, 30)) for s in range(1, 40)] + [record(s, 0.03) for s in (30, 31)]
    write_metrics(tmp_path, records, tail='{"step": 41, "lo')
    done = subprocess.run([sys.executable, "-m", "easyanimate.cli", "plot", str(tmp_path)], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "last logged step 39, loss 0.02564" in done.stdout
    png = tmp_path / "curves.png"
    assert f"curves: {png}" in done.stdout
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 600


def test_plot_refuses_a_missing_folder_and_says_when_nothing_is_logged(tmp_path):
    assert curves.main([str(tmp_path / "nope")]) == 2
    assert curves.report(tmp_path, tmp_path / "c.png", "run") == \
        (f"no metrics yet ({tmp_path / 'logs' / 'metrics.jsonl'} does not exist)", None)
