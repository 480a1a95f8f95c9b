"""Entry point: ``accelerate launch [accelerate flags] easyanimate/train_control.py FLAGS``.

Also ``accelerate launch -m easyanimate.train_control FLAGS`` and ``easyanimate train FLAGS``. Parses and
validates every flag before anything heavy loads, builds the run, trains, and exits with 0 when done or with the
requeue code after a preemption signal (the requeue marker in output_dir is the durable record of that).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by `accelerate launch easyanimate/train_control.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from easyanimate import config as config_mod  # noqa: E402
from easyanimate import distributed, redact  # noqa: E402
from easyanimate.logs import setup_logging  # noqa: E402

logger = logging.getLogger("easyanimate.train_control")


def write_config_dump(cfg: config_mod.TrainConfig, model_layout: str,
                      given: config_mod.TrainConfig | None = None) -> None:
    """output_dir/config.json: every option as the run uses it, what was detected (the model folder's layout), and
    under "as_given" the flags the run overrides, with their values as given (an elastic resume changes
    --gradient_accumulation_steps to keep the checkpoint's global batch)."""
    if distributed.is_main():
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        used = config_mod.to_dict(cfg)
        overridden = {name: value for name, value in config_mod.to_dict(given or cfg).items() if used[name] != value}
        dump = redact.mapping(used) | {"detected": {"model_layout": model_layout},  # redacted: --hub_token
                                       "as_given": redact.mapping(overridden)}
        (out / "config.json").write_text(json.dumps(dump, indent=2, sort_keys=True))


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    cfg = config_mod.parse_args(argv)
    try:
        warnings = config_mod.validate(cfg)
    except config_mod.ConfigError as error:
        logger.error("%s", error)
        return 2
    for warning in warnings:
        logger.warning("%s", warning)
    # Imported after validation: a bad flag fails in a second, not after torch/diffusers load.
    from easyanimate.training import signals
    from easyanimate.training.build import build_run
    from easyanimate.training.loop import train

    preemption = signals.PreemptionHandler()
    preemption.install()
    signals.clear_requeue_marker(cfg.output_dir)
    try:
        run = build_run(cfg)
    except config_mod.ConfigError as error:
        logger.error("%s", error)
        return 2
    write_config_dump(run.cfg, run.model_layout, given=cfg)
    code = train(run, preemption)
    if code == 0 and distributed.is_main():
        signals.write_complete_marker(cfg.output_dir, run.max_train_steps)
    run.accelerator.end_training()
    return code


if __name__ == "__main__":
    sys.exit(main())
