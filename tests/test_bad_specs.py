"""Every spec in tests/bad_specs/ fails cleanly: exit 2, one message naming the field, no traceback,
nothing created under the results folder. Each file's first line says what the message must contain."""
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.run import main

BAD = sorted(Path(__file__).parent.glob("bad_specs/*.yaml"))


def expected(path: Path) -> str:
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} must start with '# expect: <text>'"
    return first.removeprefix("# expect: ")


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_spec_fails_cleanly(path, tmp_path, capsys):
    results = tmp_path / "results"
    code = main([str(path), "--results", str(results)])
    err = capsys.readouterr().err
    assert code == 2
    assert expected(path) in err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1  # one paragraph
    assert not results.exists()


def test_bad_spec_through_the_real_cli(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "experiments.run", str(BAD[0]), "--results", str(tmp_path / "r")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.startswith("error: ")
    assert not (tmp_path / "r").exists()


def test_missing_spec_file(tmp_path, capsys):
    assert main([str(tmp_path / "nope.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
