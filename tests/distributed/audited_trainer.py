"""easyanimate/train_control.py with device_audit installed first (run by `accelerate launch` in the tests)."""

import runpy
import sys
from pathlib import Path

import device_audit

TRAIN = Path(__file__).resolve().parents[2] / "easyanimate" / "train_control.py"

if __name__ == "__main__":
    device_audit.install_from_env()
    sys.argv[0] = str(TRAIN)
    runpy.run_path(str(TRAIN), run_name="__main__")
