"""A run's checkpoint: saved with a checksum beside it, loaded safely, and every RNG state (so a
resumed run draws what an uninterrupted one would); and loading a trained run back (model,
tokenizer, resolved spec) for generation and export, with a one-paragraph error when a folder is not
a trained run.

Safety: a checkpoint is read with ``torch.load(weights_only=True)``, which builds tensors and plain
values (dicts, lists, tuples, numbers, strings) and nothing else, so a crafted file cannot run code;
everything the lab saves (RNG states and optimizer state included) is of those kinds.

Damage: every save records the file's sha256 in ``checkpoint.pt.sha256``. A file that does not match
(bytes changed, truncated) or does not load raises `DamagedCheckpoint`; the trainer then starts the
run again from step 0, and generate / export say so. The record is written before the new file
takes the old one's place and names both (and the file in place, after saves that died before
their rename), so a crash at any moment, even twice in a row, leaves a pair that matches.
A checkpoint without a record (written before checksums were kept) is loaded unverified.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import random
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from components.model import GPT
from experiments import files, interrupts
from experiments.records import read_summary
from experiments.schema import ModelConfig
from registry import TOKENIZER, SpecError, brief, load_all

RUN_FILES = ("spec.yaml", "tokenizer.json", "checkpoint.pt")
CHECKSUM_SUFFIX = ".sha256"
READ_CHUNK = 1 << 24


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be trusted: changed, truncated, unreadable, or holding more than data."""


# -- saving and loading --------------------------------------------------------------------------
class HashingWriter:
    """A file that hashes what passes through it: the checksum costs no second read of the file."""

    def __init__(self, f):
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def checksum_path(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


MAX_PREVIOUS = 16  # sums kept across saves that died before their rename (the oldest is the file in place)


def save(path: Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically, its sha256 recorded beside it (see the module's docstring)."""
    writer: dict[str, HashingWriter] = {}
    # Every sum the record accepts now, one of which is the file in place: after a save that died before
    # its rename the record names the file that never landed first, and the one in place after it.
    previous = (recorded(path) or [])[-MAX_PREVIOUS:]

    def write(f) -> None:
        writer["w"] = HashingWriter(f)
        try:
            torch.save(state, writer["w"])
        except RuntimeError as err:  # torch's writer, closed after a failed write, hides the OSError (a full disk)
            if isinstance(err.__context__, OSError):
                raise err.__context__ from None
            raise

    def record_both() -> None:  # the old file may still be in place for a moment: both sums are good
        files.write_json(checksum_path(path), {"sha256": writer["w"].sha256.hexdigest(), "previous": previous})

    with interrupts.ctrl_c_held():
        files.atomic_write(path, write, mode="wb", before_replace=record_both)
        files.write_json(checksum_path(path), {"sha256": writer["w"].sha256.hexdigest(), "previous": []})




def recorded(path: Path) -> list[str] | None:
    """The sums the record accepts for `path` (None: no record; [] when it cannot be read)."""
    try:
        record = json.loads(checksum_path(path).read_text(encoding="utf-8"))
        return [record["sha256"], *record.get("previous", [])]
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def load(path: Path) -> dict[str, Any]:
    """The state saved at `path`, on the CPU (the caller moves it to its device); DamagedCheckpoint when
    the file does not match its checksum, does not load, or holds anything but tensors and plain data."""
    sums = recorded(path)
    # Read again on a mismatch: a save may have put its record and its file in place since we read the record.
    if sums is not None and (digest := file_sha256(path)) not in sums and digest not in (recorded(path) or []):
        raise DamagedCheckpoint(f"{path.name} does not match the checksum recorded when it was saved "
                                f"({checksum_path(path).name}): its bytes were changed or cut short")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line for line in str(err).splitlines() if line.strip()] or ["refused"]
        what = next((line for line in lines if "global" in line.lower()), lines[-1])  # which object it wanted
        raise DamagedCheckpoint(f"{path.name} holds more than tensors and plain data, so it was not loaded "
                                f"(a checkpoint that builds other objects could run code): {what[:200]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise DamagedCheckpoint(f"{path.name} cannot be read ({type(err).__name__}: "
                                f"{(str(err).splitlines() or ['no detail'])[0][:200]})") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise DamagedCheckpoint(f"{path.name} is not a checkpoint of this lab (it has no model state)")
    return state


def fitting_problem(model: torch.nn.Module, saved: dict[str, Any]) -> str | None:
    """Why the saved weights do not fit `model` (names or shapes), or None: checked before loading, so a
    checkpoint that does not fit never leaves the model half-loaded."""
    own = model.state_dict()
    if set(own) != set(saved):
        missing, extra = sorted(set(own) - set(saved)), sorted(set(saved) - set(own))
        return f"its weights do not match the model (missing {missing[:3]}, unexpected {extra[:3]})"
    wrong = [k for k, v in saved.items() if not isinstance(v, torch.Tensor) or v.shape != own[k].shape]
    return f"its weights do not match the model's shapes ({wrong[:3]})" if wrong else None


def optimizer_problem(optimizer, saved: Any) -> str | None:
    """Why the saved optimizer state does not fit `optimizer` (groups, parameter indices, moment shapes)."""
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        if len(saved["param_groups"]) != len(optimizer.param_groups):
            return "its optimizer state has another number of parameter groups"
        for index, state in saved["state"].items():
            if not 0 <= int(index) < len(params) or state["exp_avg"].shape != params[int(index)].shape:
                return f"its optimizer state does not fit parameter {index}"
    except (KeyError, TypeError, AttributeError, ValueError):
        return "its optimizer state is not AdamW's"
    return None


def set_aside(path: Path, tag: str) -> Path:
    """Rename a checkpoint and its record to <stem>.<tag><suffix>, out of the run's way but kept; the new path."""
    kept = path.with_name(f"{path.stem}.{tag}{path.suffix}")
    path.replace(kept)  # the checkpoint first: a kill between the two never leaves it without its record
    if checksum_path(path).exists():
        checksum_path(path).replace(checksum_path(kept))
    return kept


def discard(path: Path) -> None:
    """Remove a checkpoint and its record (the run starts again from step 0)."""
    path.unlink(missing_ok=True)
    checksum_path(path).unlink(missing_ok=True)


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
    tokenizer = read_tokenizer(run_dir)
    model = GPT(ModelConfig(vocab_size=tokenizer.vocab_size, **spec["model"]))
    state = load(run_dir / "checkpoint.pt")
    if problem := fitting_problem(model, state["model"]):
        raise DamagedCheckpoint(f"checkpoint.pt does not fit the run's spec.yaml: {problem}")
    if not all(bool(t.isfinite().all()) for t in state["model"].values() if t.is_floating_point()):
        raise DamagedCheckpoint("its weights are not finite (the run diverged before it was saved)")
    model.load_state_dict(state["model"])
    say_which_step(run_dir, state.get("step"), spec)
    return model.to(device).eval(), tokenizer, spec


def say_which_step(run_dir: Path, step: Any, spec: dict[str, Any]) -> None:
    """A note on stderr when the checkpoint is not the finished run's: an unfinished run's, or the last
    one a diverged run saved."""
    summary = read_summary(run_dir)  # None: none yet (or damaged), the run has not finished
    status = summary["status"] if summary else None
    if status == "done":
        return
    steps = (spec.get("train") or {}).get("steps", "?")
    why = {None: "has not finished", "diverged": "diverged"}.get(status, f"ended {status}")
    print(f"note: run {run_dir.name} {why}: its model is the checkpoint of step {step} of {steps}",
          file=sys.stderr)


def read_tokenizer(run_dir: Path):
    """The run's tokenizer, rebuilt from its tokenizer.json; a SpecError when the file is damaged."""
    path = run_dir / "tokenizer.json"
    try:
        return TOKENIZER.build(files.read_json(path), {"text": ""})
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as err:  # SpecError is a ValueError
        raise SpecError(f"{str(path)!r} is damaged: it does not describe a tokenizer ({type(err).__name__}: "
                        f"{brief(str(err))}); the runner writes it when the run trains: train the run again "
                        f"with python -m experiments.run SPEC --force --only {run_dir.name}") from None


def check_run_dir(run_dir: Path) -> None:
    """Raise a SpecError saying what is missing when `run_dir` is not a trained run's folder."""
    where = "give a folder results/<experiment>/runs/<run_id>/ written by python -m experiments.run"
    if run_dir.exists() and not run_dir.is_dir():  # a run's file given for its folder, say
        raise SpecError(f"{str(run_dir)!r} is a file, not a run folder: {where}")
    if not run_dir.is_dir():
        raise SpecError(f"run folder {str(run_dir)!r} does not exist: {where}")
    not_files = [name for name in RUN_FILES if (run_dir / name).exists() and not (run_dir / name).is_file()]
    if not_files:  # a folder (or another non-file) in the way: neither missing nor a file that can be read
        raise SpecError(f"{str(run_dir / not_files[0])!r} is not a file: a run folder's {not_files[0]} is the file "
                        "python -m experiments.run writes there; move it aside and run the spec again")
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
    except DamagedCheckpoint as err:
        raise SpecError(f"the checkpoint in {str(run_dir)!r} was not used: {err}. Train the run again with "
                        f"python -m experiments.run SPEC --force --only {run_dir.name}") from None
    except (RuntimeError, KeyError, TypeError) as err:  # a spec.yaml from an incompatible version of the code
        raise SpecError(f"the run in {str(run_dir)!r} cannot be loaded ({type(err).__name__}: "
                        f"{brief(str(err).splitlines()[0] if str(err) else 'no detail')})") from None
