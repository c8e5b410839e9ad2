"""`python -m experiments.generate RUN_DIR --prompt TEXT`: sample text from a trained run.

The run's own checkpoint and tokenizer are used; the prompt, temperature and top-k default to the
run's `sample` section. Temperature 0 is greedy decoding. A gpt2-tokenizer sample ends where the
model draws <|endoftext|> (--no-stop goes on); --seed draws the same text again; --num-samples N
draws N, with seeds seed, seed + 1, ...

    python -m experiments.generate results/quickstart/runs/<run_id> --prompt "def " --tokens 100 --temperature 0
"""
from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from experiments import interrupts

if __name__ == "__main__":  # Ctrl-C while the imports below load (torch: seconds) ends quietly too
    interrupts.quiet_while_loading(interrupts.INTERRUPTED)

import torch

from experiments.checkpoint import check_run_dir, load_run, read_run_spec
from experiments.hardware import check_device
from experiments.schema import MAX_INT, SAMPLE, TOP
from registry import Range, SpecError, brief

# The options' bounds are the spec's (experiments/schema.py): a sample's seed is a spec seed, --tokens and
# --top-k are capped as sample.tokens and sample.top_k are, --num-samples as every count of a spec.
SEEDS = TOP["seeds"].range                                           # [0, 2^32 - 1]
TOKENS = Range(0, SAMPLE["tokens"].range.high, low_open=True)        # sample.tokens' cap; 0 tokens is no sample
TOP_K = SAMPLE["top_k"].range
NUM_SAMPLES = Range(0, MAX_INT, low_open=True)


# -- sampling ------------------------------------------------------------------------------------
def sample_settings(args: argparse.Namespace, run_sample: dict[str, Any]) -> dict[str, Any]:
    """The CLI's values, else the run's `sample` settings (temperature, top_k); every problem at once."""
    tokens = args.tokens
    temperature = args.temperature if args.temperature is not None else run_sample.get("temperature", 0.8)
    top_k = args.top_k if args.top_k is not None else run_sample.get("top_k")
    temperature_name = "--temperature" if args.temperature is not None else "the run's sample.temperature"
    problems = []
    if tokens not in TOKENS:
        problems.append(f"--tokens = {brief(tokens)} must be {TOKENS.describe('integer')} "
                        "(the cap on a spec's sample.tokens)")
    if problem := SAMPLE["temperature"].problem(temperature, temperature_name):
        problems.append(problem)
    if top_k is not None and top_k not in TOP_K:
        problems.append(f"--top-k = {brief(top_k)} must be {TOP_K.describe('integer')}")
    if args.num_samples not in NUM_SAMPLES:
        problems.append(f"--num-samples = {brief(args.num_samples)} must be {NUM_SAMPLES.describe('integer')}")
    if args.seed is not None and args.seed not in SEEDS:
        problems.append(f"--seed = {brief(args.seed)} must be {SEEDS.describe('integer')}, as a spec's seeds")
    elif args.seed is not None and args.num_samples in NUM_SAMPLES and args.seed + args.num_samples - 1 > SEEDS.high:
        problems.append(f"--seed = {args.seed} with --num-samples = {args.num_samples} would draw the last sample "
                        f"with seed {args.seed + args.num_samples - 1}, past the largest seed {SEEDS.high} (sample i "
                        f"uses seed + i): give a --seed <= {SEEDS.high - args.num_samples + 1}")
    if problems:
        raise SpecError(problems)
    return {"tokens": tokens, "temperature": temperature, "top_k": top_k or None}


def generate_text(model, tokenizer, prompt: str, tokens: int, temperature: float, top_k: int | None,
                  seed: int | None = None, device: str = "cpu", stop: bool = True) -> str:
    """The prompt followed by up to `tokens` sampled tokens, decoded. With `stop`, the text ends where
    the model draws its tokenizer's end-of-text token (gpt2's <|endoftext|>), which is not printed."""
    try:
        prompt_ids = tokenizer.encode(prompt)
    except SpecError as err:  # a char tokenizer knows only its corpus's characters
        raise SpecError(f"--prompt cannot be encoded with the run's tokenizer: {err}") from None
    start = prompt_ids or [0]              # an empty prompt starts from token 0, as the runner's samples do
    generator = torch.Generator(device=device)
    if seed is not None:
        generator.manual_seed(seed)
    else:
        generator.seed()
    stop_token = tokenizer.end_of_text if stop else None
    idx = torch.tensor([start], device=device)
    out = model.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator,
                         stop_token=stop_token)[0].tolist()
    if stop_token is not None and stop_token in out[len(start):]:
        out = out[:out.index(stop_token, len(start))]
    # Decode the whole sequence at once, so a byte tokenizer never splits a character at the seam.
    return tokenizer.decode(out if prompt_ids else out[len(start):])


def samples(model, tokenizer, prompt: str, settings: dict[str, Any], args: argparse.Namespace, device: str) -> str:
    """--num-samples texts, sample i drawn with seed + i, so any one of them can be drawn again alone."""
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    texts = [generate_text(model, tokenizer, prompt, seed=seed + i, device=device, stop=not args.no_stop, **settings)
             for i in range(args.num_samples)]
    if args.seed is None and settings["temperature"] > 0:
        print(f"seed {seed} (pass --seed {seed} to draw the same sample{'s' if len(texts) > 1 else ''} again)",
              file=sys.stderr)
    if len(texts) == 1:
        return texts[0]
    return "\n".join(f"--- sample {i + 1} of {len(texts)} (seed {seed + i}) ---\n{text}"
                     for i, text in enumerate(texts))


# -- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.generate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run folder: results/<experiment>/runs/<run_id>")
    p.add_argument("--prompt", help="text to continue (default: the run's sample.prompt, else token 0)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate at most (default: 200)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the run's sample.temperature)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: the run's sample.top_k)")
    p.add_argument("--seed", type=int, help="random seed: the same seed draws the same text (default: a fresh "
                                            "one, printed to stderr)")
    p.add_argument("--num-samples", type=int, default=1, metavar="N",
                   help="draw N samples, with seeds seed, seed+1, ...")
    p.add_argument("--no-stop", action="store_true",
                   help="go on past <|endoftext|> (gpt2 tokenizer) instead of ending the sample there")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = check_device(args.device)
        check_run_dir(Path(args.run_dir))
        # Every bad option is refused before the weights load (and before a sample could run for ever).
        settings = sample_settings(args, read_run_spec(Path(args.run_dir)).get("sample") or {})
        model, tokenizer, spec = load_run(args.run_dir, device)
        prompt = args.prompt if args.prompt is not None else (spec.get("sample") or {}).get("prompt") or ""
        text = samples(model, tokenizer, prompt, settings, args, device)
    except (SpecError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(interrupts.run_main(main, interrupts.INTERRUPTED))
