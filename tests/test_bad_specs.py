"""Every spec in tests/bad_specs/ fails cleanly: exit 2, one message naming the field, no traceback,
nothing created under the results folder. Each file's first line says what the message must contain."""
import os
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
def test_bad_spec_fails_cleanly(path, tmp_path, capsys, monkeypatch):
    from experiments import resources

    monkeypatch.setattr(resources, "device_memory", lambda device: 64 << 30)  # the same machine everywhere
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


def test_every_bad_spec_is_refused_without_a_memory_blow_up(tmp_path):
    """All of them in one process (an alias bomb, a 10^6-point grid, a 10^9 batch ...): a few hundred MB at
    most (torch's import included), where formatting the alias bomb alone took 1.5 GB before."""
    # VmHWM, this process's own peak: ru_maxrss would start at pytest's, which Linux carries over to a child
    script = ("import resource, sys; from experiments import resources, run\n"
              "resources.device_memory = lambda device: 64 << 30\n"
              "codes = {run.main([p, '--results', sys.argv[1]]) for p in sys.argv[2:]}\n"
              "linux = sys.platform.startswith('linux')\n"
              "print(codes, int(resources.peak_rss_mb() * 1024) if linux else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r"), *map(str, BAD)],
                          capture_output=True, text=True, timeout=600)
    codes, peak = proc.stdout.split("}")
    peak_kb = int(peak) // (1024 if sys.platform == "darwin" else 1)  # ru_maxrss: bytes on macOS, KiB on Linux
    assert codes == "{2" and "Traceback" not in proc.stderr
    assert peak_kb < 1 << 20, f"peak memory {peak_kb >> 10} MiB"
    assert not (tmp_path / "r").exists()


def refused(capsys, argv, results) -> str:
    """main(argv): exit 2, one 'error: ' paragraph, no traceback, nothing under `results`."""
    assert main([*map(str, argv), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") == 1
    assert not results.exists()
    return err


def test_a_spec_that_is_not_utf8_is_refused_with_where(tmp_path, capsys):
    spec = tmp_path / "latin1.yaml"
    spec.write_bytes(b"experiment: x\nsample: {prompt: \"caf\xe9\"}\n")
    err = refused(capsys, [spec], tmp_path / "r")
    assert "is not UTF-8 text: byte 0xE9 at offset 35 (line 2)" in err


@pytest.mark.parametrize("kind", ["fifo", "dangling link"])
def test_a_spec_or_corpus_that_is_not_a_regular_file_is_refused_without_waiting(tmp_path, capsys, kind):
    target = tmp_path / "odd"
    if kind == "fifo":
        os.mkfifo(target)  # reading it would wait forever
    else:
        target.symlink_to(tmp_path / "nowhere")
    why = "is not a regular file" if kind == "fifo" else "is a link that leads nowhere"
    assert why in refused(capsys, [target], tmp_path / "r")
    assert why in refused(capsys, [BAD[0].parent.parent.parent / "specs" / "quickstart.yaml",
                                   f"data.corpus={target}"], tmp_path / "r")


def test_command_line_options_are_checked_like_spec_fields(tmp_path, capsys):
    quickstart = Path(__file__).parent.parent / "specs" / "quickstart.yaml"
    assert "--device = 'tpu' must be auto, cpu, cuda, cuda:N or mps" in refused(
        capsys, [quickstart, "--device", "tpu"], tmp_path / "r")
    assert "--only = 'zzz*' matches no run id or variant" in refused(
        capsys, [quickstart, "--only", "zzz*"], tmp_path / "r")
    search = Path(__file__).parent.parent / "specs" / "search_heads_layers.yaml"
    for workers in ("0", "100000"):
        assert f"--workers = {workers} must be an integer from 1 to" in refused(
            capsys, [search, "--workers", workers], tmp_path / "r")
