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

from registry import SpecError

RUN_FILES = ("spec.yaml", "tokenizer.json", "checkpoint.pt")


# -- loading a run -------------------------------------------------------------------------------
def check_run_dir(run_dir: Path) -> None:
    """Raise a SpecError saying what is missing when `run_dir` is not a trained run's folder."""
    if not run_dir.is_dir():
        raise SpecError(f"run folder {str(run_dir)!r} does not exist: give a folder "
                        "results/<experiment>/runs/<run_id>/ written by python -m experiments.run")
    missing = [name for name in RUN_FILES if not (run_dir / name).is_file()]
    if missing == ["checkpoint.pt"]:
        raise SpecError(f"run folder {str(run_dir)!r} has no checkpoint.pt: the run has not trained far "
                        "enough to save one (or it failed; see its summary.json / error.txt); "
                        "run its spec again with python -m experiments.run to finish it")
    if missing:
        raise SpecError(f"{str(run_dir)!r} is not a run folder: it lacks {', '.join(missing)}; a run folder is "
                        "results/<experiment>/runs/<run_id>/ as python -m experiments.run writes it")


def read_run_spec(run_dir: Path) -> dict[str, Any]:
    """The resolved run spec a run folder records (its spec.yaml)."""
    import yaml

    try:
        spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(f"{str(run_dir / 'spec.yaml')!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise SpecError(f"{str(run_dir / 'spec.yaml')!r} is not a resolved run spec (it has no model section)")
    return spec


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, resolved run spec), or a SpecError saying why not."""
    import pickle
    import zipfile

    from experiments.train import load_model

    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    read_run_spec(run_dir)
    try:
        return load_model(run_dir, device=device)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError) as err:
        # A truncated file or a checkpoint from an incompatible version of the model code.
        raise SpecError(f"the checkpoint in {str(run_dir)!r} cannot be loaded ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None


def check_device(name: str) -> str:
    """'auto' -> the best device present; a named device that is absent -> SpecError."""
    import torch

    from experiments.train import resolve_device

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
    import torch

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
