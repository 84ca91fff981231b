"""cpt: continued pretraining of causal language models with Hydra-composed runs and FSDP2."""

__version__ = "0.1.0"
