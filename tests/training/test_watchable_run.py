"""A short run a person can watch: progress lines in the log, tensorboard events with the default --report_to,
validation videos with the conditions beside the generated video (V5.1 control_ref and V5 control)."""

import json
import re
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from easyanimate.config import TrainConfig, parse_args
from easyanimate.data.transforms import resize_clip
from easyanimate.training.validation import Validator, control_indices
from test_training_behaviour import CONFIGS, REPO, V5, V51, train
from trainer_runs import metrics, train_env

pytestmark = pytest.mark.integration

STEPS = 6
LINE = re.compile(r"step (\d+)/6 loss \S+ \(last \S+\) lr \S+ grad norm \S+ \| \S+ s/step \S+ samples/s \S+ "
                  r"tokens/s data-wait \d+% \| ETA \d+:\d\d:\d\d \| peak mem \S+ GiB")
FIELDS = {"loss", "loss_smoothed", "lr", "grad_norm", "s_per_step", "samples_per_s", "tokens_per_s",
          "data_wait_share", "eta_s", "peak_mem_gib"}


def control_video(demo_data):
    entries = json.loads((demo_data / "metadata_control.json").read_text())
    return demo_data / next(e for e in entries if e["type"] == "video")["control_file_path"]


def run(model, demo_data, output, version, *extra):
    loss_type, _, yaml, mode = version
    result = train(model, demo_data, demo_data / "metadata_control.json", output, loss_type, yaml, mode,
                   f"--max_train_steps={STEPS}", f"--validation_steps={STEPS}", "--video_sample_stride=2",
                   "--validation_prompts", "a ball", "--validation_paths", str(control_video(demo_data)), *extra)
    assert result.returncode == 0, result.stderr[-5000:]
    return result


def frames(path):
    import decord
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader


def test_v51_run_logs_progress_writes_tensorboard_and_a_side_by_side_video(tiny_model_v51, demo_data, tmp_path):
    output = tmp_path / "out"
    # The trainer's default --report_to, tensorboard (train() passes none; a later flag wins).
    assert parse_args([]).report_to == "tensorboard"
    result = run(tiny_model_v51, demo_data, output, V51, "--report_to=tensorboard", "--log_every_s=3600")

    steps = [int(m.group(1)) for m in LINE.finditer(result.stderr)]
    assert steps[:5] == [1, 2, 3, 4, 5] and steps[-1] == STEPS, result.stderr[-3000:]
    assert all(FIELDS <= set(record) for record in metrics(output))

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = list((output / "logs").rglob("events.out.tfevents.*"))
    assert events, "no tensorboard event file under output_dir/logs"
    tags = set()
    for path in events:
        accumulator = EventAccumulator(str(path))
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"]) | set(accumulator.Tags()["images"])
    assert {"loss", "samples_per_s", "validation/0"} <= tags

    video, _ = frames(output / "sample" / f"step-{STEPS}-0.mp4")
    assert video.shape == (9, 32, 3 * 32, 3)  # control | reference image | generated
    # The control panel is the control video read at the training stride (2), not at stride 1.
    control, reader = frames(control_video(demo_data))
    wanted = control_indices(len(reader), 9, 2)
    expected = resize_clip(torch.from_numpy(control), 32, 32).permute(0, 2, 3, 1).numpy().astype(float)
    panel = video[:, :, :32].astype(float)
    at_stride = np.abs(panel - expected[wanted]).mean()
    at_one = np.abs(panel - expected[wanted[0]:wanted[0] + 9]).mean()
    assert at_stride < 0.7 * at_one, (at_stride, at_one)
    # The reference panel holds the training video's first clip frame in every frame.
    assert np.abs(video[0, :, 32:64].astype(float) - video[-1, :, 32:64]).mean() < 3


def test_v5_validation_runs_both_text_encoders_and_shows_control_and_generated(tiny_model_v5, demo_data, tmp_path):
    run(tiny_model_v5, demo_data, tmp_path / "out", V5)
    video, _ = frames(tmp_path / "out" / "sample" / f"step-{STEPS}-0.mp4")
    assert video.shape == (9, 32, 2 * 32, 3)  # control | generated (a control model has no reference slot)


SIGNALLED_RUN = """
import sys
from easyanimate.config import parse_args
from easyanimate.training import loop, signals
from easyanimate.training.build import build_run

run = build_run(parse_args(sys.argv[1:]))
preemption = signals.PreemptionHandler()
preemption.received = "SIGUSR1"  # as if the signal came during the first step
sys.exit(loop.train(run, preemption))
"""


def test_a_signal_before_a_due_validation_skips_it_and_saves_at_once(tiny_model_v51, demo_data, tmp_path):
    output = tmp_path / "out"
    flags = [f"--pretrained_model_name_or_path={tiny_model_v51}", f"--train_data_dir={demo_data}",
             f"--train_data_meta={demo_data / 'metadata_control.json'}", f"--config_path={CONFIGS / V51[2]}",
             "--image_sample_size=32", "--video_sample_size=32", "--token_sample_size=32", "--video_sample_n_frames=9",
             "--train_batch_size=1", "--video_repeat=1", "--seed=42", f"--output_dir={output}", "--enable_bucket",
             "--loss_type=flow", "--train_mode=control_ref", "--max_train_steps=4", "--validation_steps=1",
             "--validation_prompts", "a ball", "--validation_paths", str(control_video(demo_data)), "--report_to=none"]
    done = subprocess.run([sys.executable, "-c", SIGNALLED_RUN, *flags], capture_output=True, text=True,
                          env=train_env(), cwd=REPO, timeout=600)
    assert done.returncode == 75, done.stderr[-3000:]  # the requeue code
    assert json.loads((output / "requeue.json").read_text())["step"] == 1
    assert not list(output.glob("sample/*.mp4")), "validated between the signal and its save"


def test_validation_stops_before_the_next_prompt_once_a_signal_came(tmp_path, caplog):
    cfg = TrainConfig(output_dir=str(tmp_path), validation_prompts=["a", "b"], seed=1)
    model = SimpleNamespace(training=True, eval=lambda: None, train=lambda mode: None)
    run = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m, trackers=[]))
    Validator(cfg, SimpleNamespace(noise_scheduler=None), DDIMScheduler).run(run, 10, interrupted=lambda: True)
    assert "stopped after 0 of 2 videos" in caplog.text and not list(tmp_path.glob("sample/*.mp4"))
