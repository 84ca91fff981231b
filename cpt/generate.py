"""`python -m cpt.generate <model dir> --prompt "..."`: text from an exported (or any transformers) model.

Sampling by default (temperature, top-p, top-k; `--greedy` for argmax). When the tokenizer has a chat template the
prompt is sent as a user turn through it; `--raw` continues the prompt as plain text instead (what continued
pretraining on raw documents teaches). Seeded: the same command gives the same text.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cpt.common.errors import user_errors
from cpt.eval.generate import generate, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m cpt.generate", description=__doc__.split("\n")[0])
    p.add_argument("model", help="model directory (e.g. <run dir>/hf) or hub id")
    p.add_argument("--prompt", action="append", required=True, help="prompt text; repeat for several prompts")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--top-k", type=int, default=50, help="0 = no top-k filter")
    p.add_argument("--repetition-penalty", type=float, default=1.1)
    p.add_argument("--greedy", action="store_true", help="argmax decoding (ignores the sampling options)")
    p.add_argument("--raw", action="store_true", help="do not apply the tokenizer's chat template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = p.parse_args(argv)
    if args.max_new_tokens < 1 or args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        p.error("need --max-new-tokens >= 1, --temperature > 0, 0 < --top-p <= 1, --top-k >= 0")
    return args


@user_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    model, tokenizer = load(args.model, args.device)
    for prompt in args.prompt:
        text = generate(model, tokenizer, prompt, args)
        print(f"### prompt\n{prompt}\n### {Path(args.model).name} continues\n{text}\n", flush=True)


if __name__ == "__main__":
    main()
