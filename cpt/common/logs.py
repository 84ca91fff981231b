"""Per-rank logging: global rank 0 logs INFO to the console and to `<run dir>/train.log` (or `log_name`); the other
ranks log errors only, to the console, prefixed with their rank, so a failing rank's message is visible while a
warning that every rank would print (too little validation text, RNG states start fresh) comes once, from rank 0."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] %(message)s"


def setup_logging(run_dir: Path, rank: int, log_name: str = "train.log") -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):  # Hydra's console handler, or ours from an earlier job in this process
        root.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(run_dir / log_name))
        fmt, level = FORMAT, logging.INFO
    else:
        fmt, level = f"[rank {rank}]" + FORMAT, logging.ERROR
    for handler in handlers:
        handler.setFormatter(logging.Formatter(fmt))
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    for noisy in ("httpx", "httpcore", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if rank != 0:  # one copy of each warning per job is enough
        warnings.filterwarnings("ignore")
