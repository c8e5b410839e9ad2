"""A run's checkpoint, beyond the Trainer's own state: every RNG state (so a resumed run draws what an
uninterrupted one would), and loading a trained run back (model, tokenizer, resolved spec) for
generation and export, with a one-paragraph error when a folder is not a trained run."""
from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from components.model import GPT
from experiments import files
from experiments.schema import ModelConfig
from registry import TOKENIZER, SpecError, load_all

RUN_FILES = ("spec.yaml", "tokenizer.json", "checkpoint.pt")


# -- RNG state -----------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].copy()), *numpy_state[2:]]}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))


# -- a trained run -------------------------------------------------------------------------------
def load_model(run_dir: Path, device: str = "cpu"):
    """(model, tokenizer, run spec) of a trained run, from its checkpoint."""
    load_all()  # the tokenizer registry fills on import of components.tokenizer
    spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    tokenizer = TOKENIZER.build(files.read_json(run_dir / "tokenizer.json"), {"text": ""})
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, **spec["model"]))
    state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), tokenizer, spec


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
    try:
        spec = yaml.safe_load((run_dir / "spec.yaml").read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise SpecError(f"{str(run_dir / 'spec.yaml')!r} is not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise SpecError(f"{str(run_dir / 'spec.yaml')!r} is not a resolved run spec (it has no model section)")
    return spec


def load_run(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model in eval mode, tokenizer, resolved run spec), or a SpecError saying why not."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    read_run_spec(run_dir)
    try:
        return load_model(run_dir, device=device)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, KeyError) as err:
        # A truncated file or a checkpoint from an incompatible version of the model code.
        raise SpecError(f"the checkpoint in {str(run_dir)!r} cannot be loaded ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'no detail'})") from None
