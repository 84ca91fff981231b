"""`python -m cpt.prepare data=<name> [model=<model>]`: raw documents -> deduplicated, split, packed token shards.

Composes the same config as training (the `data` group names the sources, the `model` group the tokenizer) and runs
cpt.data.prepare (its docstring lists the stages); the log goes to the Hydra run directory's prepare.log.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from cpt.common.errors import user_errors
from cpt.common.logs import setup_logging
from cpt.config.schema import to_run_config
from cpt.data.prepare import prepare


@hydra.main(config_path="../conf", config_name="prepare", version_base="1.3")
@user_errors
def main(cfg: DictConfig) -> None:
    setup_logging(Path(HydraConfig.get().runtime.output_dir), rank=0, log_name="prepare.log")
    prepare(to_run_config(cfg))


if __name__ == "__main__":
    main()
