"""Trackers across requeues: a resumed run continues the same wandb run (its id kept in output_dir)."""

from types import SimpleNamespace

from easyanimate.config import TrainConfig
from easyanimate.training.build import init_trackers


class FakeAccelerator:
    """Records what init_trackers asks of accelerate; wandb's run id is the one it would have made up."""

    def __init__(self, run_id):
        self.log_with, self.calls, self.run_id, self.trackers = ["wandb"], [], run_id, []

    def init_trackers(self, project, config, init_kwargs):
        self.calls.append(init_kwargs)
        self.trackers = [SimpleNamespace(name="wandb", run=SimpleNamespace(id=self.run_id))]


def test_a_requeued_attempt_resumes_the_first_attempts_wandb_run(tmp_path):
    cfg = TrainConfig(output_dir=str(tmp_path), report_to="wandb")
    first, second = FakeAccelerator("run-1"), FakeAccelerator("run-2")
    init_trackers(first, cfg)
    init_trackers(second, cfg)
    assert first.calls == [{}]
    assert second.calls == [{"wandb": {"id": "run-1", "resume": "allow"}}]
