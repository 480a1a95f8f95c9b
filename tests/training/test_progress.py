"""Progress arithmetic (smoothing, rates, ETA, data-wait share, the line) and its schedule, without a trainer."""

import logging

import pytest
import torch

from easyanimate.training import progress
from easyanimate.training.progress import (LogSchedule, Progress, RateWindow, Smoother, StepTiming, eta_seconds,
                                           format_duration, format_line, latent_tokens)


def test_smoother_starts_at_the_first_value_and_follows_a_level_shift():
    smoother = Smoother(0.9)
    assert smoother.update(2.0) == pytest.approx(2.0)  # bias-corrected: not 0.2
    values = [smoother.update(1.0) for _ in range(100)]
    assert values[0] > 1.0 and values[-1] == pytest.approx(1.0, abs=1e-4)


def test_rate_window_rates_and_data_wait_share_over_the_last_steps_only():
    window = RateWindow(size=2)
    window.add(StepTiming(seconds=100.0, data_wait_s=100.0, samples=1, tokens=1))  # falls out of the window
    window.add(StepTiming(seconds=2.0, data_wait_s=0.5, samples=8, tokens=800))
    window.add(StepTiming(seconds=2.0, data_wait_s=0.5, samples=8, tokens=800))
    assert window.rates() == pytest.approx({"s_per_step": 2.0, "samples_per_s": 4.0, "tokens_per_s": 400.0,
                                            "data_wait_share": 0.25})
    assert RateWindow().rates() == {}


def test_eta_and_duration_text():
    assert eta_seconds(90, 100, 2.5) == 25.0
    assert eta_seconds(100, 100, 2.5) == 0
    assert eta_seconds(1, 100, None) is None
    assert format_duration(3725) == "1:02:05"
    assert format_duration(2 * 86400 + 61) == "2d 0:01:01"
    assert format_duration(None) == "?"


def test_latent_tokens_of_a_v51_batch():
    # 49 frames at 512x512: 13 latent frames x 32 x 32 patches (VAE 8x spatial, 4x temporal, patch 2).
    assert latent_tokens((2, 49, 3, 512, 512), 8, 4, 2) == 2 * 13 * 32 * 32


def test_line_has_every_field():
    fields = {"loss": 0.25, "loss_smoothed": 0.3, "lr": 1e-4, "grad_norm": 0.5, "s_per_step": 1.5,
              "samples_per_s": 10.7, "tokens_per_s": 12345.0, "data_wait_share": 0.123, "eta_s": 61,
              "peak_mem_gib": 3.25}
    assert format_line(7, 100, fields) == ("step 7/100 loss 0.3 (last 0.25) lr 0.0001 grad norm 0.5 | 1.5 s/step "
                                           "10.7 samples/s 12.3k tokens/s data-wait 12% | ETA 0:01:01 | "
                                           "peak mem 3.25 GiB")


def test_schedule_logs_the_first_steps_then_every_interval_and_the_last_step():
    schedule = LogSchedule(start_step=10, total=1000, every_s=30, first=3)
    due = [step for step, now in [(11, 0), (12, 1), (13, 2), (14, 3), (15, 20), (16, 33), (17, 40), (18, 63)]
           if schedule.due(step, now)]
    assert due == [11, 12, 13, 16, 18]
    assert schedule.due(1000, 64)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_progress_times_data_wait_and_steps_and_logs_lines(caplog):
    clock = FakeClock()

    def loader():
        for _ in range(4):
            clock.now += 1.0  # one second waiting for each batch
            yield {"pixel_values": torch.zeros(2, 9, 3, 32, 32)}

    watch = Progress(0, 2, every_s=30, world_size=4, token_factors=(8, 4, 2), device=torch.device("cpu"),
                     clock=clock, bar=False)
    batches = watch.timed(loader())
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        for step in (1, 2):
            for _ in range(2):  # two micro-batches per optimizer step
                next(batches)
                clock.now += 2.0  # two seconds of compute each
            fields = watch.step(step, {"loss": float(step), "lr": 0.1})
    assert fields["s_per_step"] == pytest.approx(6.0)
    assert fields["data_wait_share"] == pytest.approx(2 / 6)
    # 2 micro-batches x 2 samples x 4 ranks per 6 s; tokens: 3 latent frames x 2 x 2 patches per sample.
    assert fields["samples_per_s"] == pytest.approx(16 / 6)
    assert fields["tokens_per_s"] == pytest.approx(16 * 12 / 6)
    assert fields["eta_s"] == 0 and fields["loss_smoothed"] == pytest.approx(0.29 / 0.19)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"]
    assert "attempt_start" not in fields  # only on the first step of the attempt


def test_on_a_terminal_a_bar_follows_the_steps_instead_of_lines(caplog):
    watch = Progress(3, 10, every_s=30, world_size=1, token_factors=(8, 4, 2), device=torch.device("cpu"),
                     clock=FakeClock(), bar=True)
    with caplog.at_level(logging.INFO, logger=progress.__name__):
        for step in (4, 5):
            watch.step(step, {"loss": 1.0, "lr": 0.1})
    assert watch.bar.n == 5 and "loss 1 (last 1)" in str(watch.bar.postfix)
    assert not [r for r in caplog.records if r.getMessage().startswith("step ")]
    watch.close()
