"""`python -m cpt.evaluate data=<name> +models.base=<dir> +models.trained=<dir>`: held-out perplexity, side by side.

A model is a transformers directory, a hub id, or a cpt checkpoint / run directory (exported first, with
cpt.train.export). The scoring and the report are cpt.eval.compare's (its docstring says what is measured).
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpt.common.errors import user_errors
from cpt.common.logs import setup_logging
from cpt.config.schema import EvalConfig, to_run_config
from cpt.eval.compare import evaluate
from cpt.train.checkpoint import META
from cpt.train.export import export_checkpoint


def model_dir(path: str, scratch: Path) -> str:
    """A model directory or hub id as given; a cpt checkpoint or run directory exported first."""
    if (Path(path) / META).is_file() or (Path(path) / "checkpoints").is_dir():
        return str(export_checkpoint(Path(path), scratch / Path(path).name))
    return path


@hydra.main(config_path="../conf", config_name="evaluate", version_base="1.3")
@user_errors  # below @hydra.main, or Hydra prints its traceback first
def main(cfg: DictConfig) -> None:
    typed: EvalConfig = to_run_config(cfg, EvalConfig)
    out = Path(typed.out or HydraConfig.get().runtime.output_dir)
    setup_logging(out, rank=0, log_name="evaluate.log")
    evaluate(typed, out, model_dir)


if __name__ == "__main__":
    main()
