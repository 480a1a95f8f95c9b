"""Two ranks built the way the trainer builds them (``training.build.build_accelerator``): rank 1 stops entering
collectives, rank 0 enters the trainer's step-boundary agreement (``distributed.any_true``) and records how it ended.
Run by `accelerate launch` in tests/distributed/test_collective_timeout.py."""

import json
import sys
import time
import traceback
from pathlib import Path

from easyanimate import config, distributed
from easyanimate.training import build

if __name__ == "__main__":
    out = Path(sys.argv[1])
    accelerator = build.build_accelerator(config.parse_args([f"--output_dir={out}", "--report_to=none"]))
    distributed.barrier()  # both ranks are up
    if distributed.rank() == 1:
        time.sleep(600)  # a peer that hangs (a dead node's rank never answers); the test ends it
        sys.exit(0)
    start = time.monotonic()
    try:
        distributed.any_true(False)
        result = {"error": None}
    except Exception as error:  # noqa: BLE001 (any failure is the result we report)
        result = {"error": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
    result["elapsed_s"] = time.monotonic() - start
    (out / "rank0.json").write_text(json.dumps(result))
    sys.exit(0)
