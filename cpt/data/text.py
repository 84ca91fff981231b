"""Plain-text files tokenized on the fly into one token stream (documents joined by EOS), split into a
train head and a held-out validation tail. For small samples; large corpora go through `cpt.prepare`."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from cpt.config import DataConfig
from cpt.model import Tokenizer

log = logging.getLogger(__name__)


def load_text_tokens(cfg: DataConfig, tokenizer: Tokenizer, min_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val) 1-D int64 token tensors; each split holds at least `min_tokens` tokens."""
    ids: list[int] = []
    for i, name in enumerate(cfg.text_files):
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"config key 'data.text_files[{i}]': no such file: {path.resolve()}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"data.text_files[{i}]: {path} is not UTF-8 text (byte {e.start}): convert it first") from e
        ids.extend(tokenizer.encode(text))
        ids.append(tokenizer.eos_token_id)
    tokens = torch.tensor(ids, dtype=torch.long)
    n_val = int(len(tokens) * cfg.val_fraction)
    train, val = tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]
    for split, part, key in (("train", train, "data.text_files"), ("validation", val, "data.val_fraction")):
        if len(part) < min_tokens:
            raise ValueError(
                f"config key '{key}': the {split} split has {len(part)} tokens, fewer than one window of "
                f"trainer.seq_len+1={min_tokens}: add text, shorten trainer.seq_len or change data.val_fraction"
            )
    log.info("data %s: %d train tokens, %d validation tokens", cfg.name, len(train), len(val))
    return train, val
