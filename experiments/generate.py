"""`python -m experiments.generate RUN_DIR --prompt TEXT`: sample text from a trained run.

The run's own checkpoint and tokenizer are used; the prompt, temperature and top-k default to the
run's `sample` section. Temperature 0 is greedy decoding.

    python -m experiments.generate results/quickstart/runs/<run_id> --prompt "def " --tokens 100 --temperature 0
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from experiments.checkpoint import load_run
from experiments.hardware import resolve_device
from registry import SpecError


def check_device(name: str) -> str:
    """'auto' -> the best device present; a named device that is absent -> SpecError."""
    try:
        device = resolve_device(name)
    except RuntimeError:
        raise SpecError(f"--device {name!r} is not a device name: use cpu, cuda, cuda:N, mps or auto") from None
    present = {"cpu": True, "cuda": torch.cuda.is_available(),
               "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if not present.get(device.type, False):
        raise SpecError(f"--device {name!r} is not available on this machine (try cpu or auto)")
    return str(device)


# -- sampling ------------------------------------------------------------------------------------
def sample_settings(args: argparse.Namespace, run_sample: dict[str, Any]) -> dict[str, Any]:
    """The CLI's values, else the run's `sample` settings (temperature, top_k); every problem at once."""
    tokens = args.tokens
    temperature = args.temperature if args.temperature is not None else run_sample.get("temperature", 0.8)
    top_k = args.top_k if args.top_k is not None else run_sample.get("top_k")
    problems = []
    if tokens < 0:
        problems.append(f"--tokens = {tokens} must be an integer >= 0")
    if temperature < 0:
        problems.append(f"--temperature = {temperature} must be a number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        problems.append(f"--top-k = {top_k} must be a positive integer")
    if problems:
        raise SpecError(problems)
    return {"tokens": tokens, "temperature": temperature, "top_k": top_k or None}


def generate_text(model, tokenizer, prompt: str, tokens: int, temperature: float, top_k: int | None,
                  seed: int | None = None, device: str = "cpu") -> str:
    """The prompt followed by `tokens` sampled tokens, decoded."""
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
    idx = torch.tensor([start], device=device)
    out = model.generate(idx, tokens, temperature=temperature, top_k=top_k, generator=generator)[0].tolist()
    # Decode the whole sequence at once, so a byte tokenizer never splits a character at the seam.
    return tokenizer.decode(out if prompt_ids else out[len(start):])


# -- CLI -----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.generate", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="a run folder: results/<experiment>/runs/<run_id>")
    p.add_argument("--prompt", help="text to continue (default: the run's sample.prompt, else token 0)")
    p.add_argument("--tokens", type=int, default=200, help="tokens to generate (default: 200)")
    p.add_argument("--temperature", type=float, help="0 = greedy (default: the run's sample.temperature)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default: the run's sample.top_k)")
    p.add_argument("--seed", type=int, help="random seed for sampling (default: a fresh one each call)")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        device = check_device(args.device)
        model, tokenizer, spec = load_run(args.run_dir, device)
        settings = sample_settings(args, spec.get("sample") or {})
        prompt = args.prompt if args.prompt is not None else (spec.get("sample") or {}).get("prompt") or ""
        text = generate_text(model, tokenizer, prompt, seed=args.seed, device=device, **settings)
    except SpecError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
