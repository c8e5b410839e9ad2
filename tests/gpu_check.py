"""`make gpu-check`: the CUDA paths checked on a GPU in one command (~5-8 minutes on one GPU), writing
one CSV and one log into a folder (default gpu-check/).

    python tests/gpu_check.py [--out gpu-check] [--budget 480]

The checks (README.md, "Checking a GPU"):
  1. every positional x attention, forward and backward on CUDA in bf16 and fp32, with only the fused
     SDPA kernel that should apply allowed, within 2e-2 of the CPU in float32   (tests/test_gpu.py)
  2. a 40-step run on CUDA killed at step 27 (checkpoint at 25) and rerun ends `done`, within 1e-3
     of an uninterrupted run                                                      (tests/test_gpu.py)
  3. a grid of 6 configurations with compile in one process: every run compiled, no graph compiled
     after step 2                                                                 (tests/test_gpu.py)
  4. nine training steps under torch.cuda.set_sync_debug_mode("error")            (tests/test_gpu.py)
  5. python -m experiments.bench --preset gpt2-124m --precision bf16, with and without compile:
     ms/step, MFU against the measured and the datasheet peak, peak memory
  6. tests/test_ddp.py and tests/test_runner.py on the GPU host (they pin the CPU; run alongside 1-4)
  7. 1,100 tokens generated from an ALiBi model at context 1024 in bounded memory (tests/test_gpu.py)

Without CUDA it says so and exits 2: it never reports a check it could not run. Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["check", "item", "status", "seconds", "metric", "value"]
CHECK_OF_TEST = {"test_cuda_training_step_matches_cpu_fp32": "1 cuda vs cpu fp32",
                 "test_resume_on_cuda": "2 resume on cuda", "test_a_6_config_grid": "3 compile grid",
                 "test_nine_training_steps": "4 no hidden sync", "test_generating_1100_tokens": "7 generation memory",
                 "test_ddp_picks": "6 ddp backend"}
BENCH = ["-m", "experiments.bench", "--preset", "gpt2-124m", "--precision", "bf16", "--compile", "--steps", "20",
         "--warmup", "5", "--no-fixed-cost"]
BENCH_METRICS = ("step_ms", "tokens_per_s", "mfu", "mfu_datasheet", "peak_mem_mb", "gflops", "peak_gflops")


class Report:
    """The CSV rows and the log, written as the checks go (a check that hangs leaves the earlier ones)."""

    def __init__(self, out: Path):
        out.mkdir(parents=True, exist_ok=True)
        self.csv_path, self.log_path = out / "gpu_check.csv", out / "gpu_check.log"
        self.rows: list[dict] = []
        self.log_path.write_text("")
        self.write()

    def log(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(text + "\n")

    def add(self, check: str, item: str, status: str, seconds: float | None = None, metric: str = "", value="") -> None:
        self.rows.append({"check": check, "item": item, "status": status,
                          "seconds": "" if seconds is None else round(seconds, 2), "metric": metric, "value": value})
        self.write()

    def write(self) -> None:
        with open(self.csv_path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows(self.rows)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in ("failed", "error", "timeout")]


def environment(report: Report) -> bool:
    """The GPU, torch and CUDA versions, logged; False where CUDA is not usable."""
    import torch
    if not torch.cuda.is_available():
        report.log(f"gpu-check: no usable CUDA device here (torch {torch.__version__}, CUDA build "
                   f"{torch.version.cuda or 'none'}): nothing was checked. Run it on a GPU host.")
        return False
    facts = {"gpu": torch.cuda.get_device_name(0), "gpus": torch.cuda.device_count(), "torch": torch.__version__,
             "cuda": torch.version.cuda, "python": platform.python_version(),
             "capability": ".".join(map(str, torch.cuda.get_device_capability(0)))}
    report.log("gpu-check: " + ", ".join(f"{k} {v}" for k, v in facts.items()))
    for key, value in facts.items():
        report.add("0 environment", key, "info", metric=key, value=value)
    return True


def run_logged(report: Report, title: str, args: list[str], timeout: float, env: dict | None = None):
    """Run `python args...` from the repository root; its output goes to the log. (returncode or
    'timeout', seconds)."""
    report.log(f"\n==== {title}: {sys.executable} {' '.join(args)} (timeout {timeout:.0f} s)")
    started = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code = "timeout"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (err.stdout, err.stderr))
    report.log(output.rstrip())
    return code, time.perf_counter() - started


def junit_rows(report: Report, xml_path: Path, default_check: str, skip_fails: bool = False) -> int:
    """One CSV row per test (and per figure it recorded); the number of tests read. With skip_fails a
    skipped test is a failed one (a GPU test that skips on a GPU host did not check anything)."""
    if not xml_path.exists():
        return 0
    cases = ElementTree.parse(xml_path).getroot().iter("testcase")
    count = 0
    for case in cases:
        count += 1
        name = case.get("name", "")
        check = next((c for prefix, c in CHECK_OF_TEST.items() if name.startswith(prefix)), default_check)
        status = next((tag for tag in ("failure", "error", "skipped") if case.find(tag) is not None), "passed")
        status = {"failure": "failed", "skipped": "failed" if skip_fails else "skipped"}.get(status, status)
        seconds = float(case.get("time", 0))
        props = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        for metric, value in props or [("", "")]:
            report.add(check, f"{Path(case.get('classname', '').replace('.', '/')).name}::{name}", status, seconds,
                       metric, value)
    return count


def pytest_check(report: Report, title: str, check: str, paths: list[str], extra: list[str], timeout: float,
                 skip_fails: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        xml_path = Path(tmp) / "junit.xml"
        code, seconds = run_logged(report, title, ["-m", "pytest", "-q", "-p", "no:cacheprovider", *paths, *extra,
                                                   "-o", "junit_family=xunit1",
                                                   f"--junitxml={xml_path}"], timeout)
        if not junit_rows(report, xml_path, check, skip_fails) or code == "timeout":
            report.add(check, " ".join(paths), "timeout" if code == "timeout" else "error", seconds, "exit", code)


def bench_check(report: Report, timeout: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "bench.csv"
        code, seconds = run_logged(report, "5: " + " ".join(BENCH[1:]), [*BENCH, "--csv", str(table)], timeout)
        if code != 0 or not table.exists():
            report.add("5 bench", "gpt2-124m bf16", "timeout" if code == "timeout" else "failed", seconds, "exit", code)
            return
        with open(table, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                item = f"{row['preset']} {row['precision']} compile={row['compile']} batch {row['batch_size']}"
                for metric in BENCH_METRICS:
                    report.add("5 bench", item, "passed", seconds, metric, row[metric])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python tests/gpu_check.py", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="gpu-check", help="folder for gpu_check.csv and gpu_check.log")
    p.add_argument("--budget", type=float, default=480, help="seconds for all checks (default 480)")
    args = p.parse_args(argv)
    report = Report(Path(args.out))
    if not environment(report):
        report.add("0 environment", "cuda", "error", metric="cuda", value="not available")
        return 2
    deadline = time.monotonic() + args.budget
    left = lambda share: max(30.0, min(share, deadline - time.monotonic()))  # noqa: E731
    cpu_xml, cpu_out = Path(args.out) / ".cpu_tests.xml", Path(args.out) / ".cpu_tests.out"
    # 6 runs on the CPU cores while the GPU tests run: they pin the CPU and share nothing with them.
    with open(cpu_out, "w", encoding="utf-8") as out:
        cpu_tests = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                      "tests/test_ddp.py", "tests/test_runner.py", "-o", "junit_family=xunit1",
                                      f"--junitxml={cpu_xml}"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    pytest_check(report, "1-4, 7: tests/test_gpu.py", "gpu tests", ["tests/test_gpu.py"], ["-m", "gpu", "-rA"], left(300),
                 skip_fails=True)
    try:
        cpu_tests.wait(timeout=left(240))  # they started with the GPU tests
    except subprocess.TimeoutExpired:
        cpu_tests.kill()
        cpu_tests.wait()
    report.log("\n==== 6: tests/test_ddp.py tests/test_runner.py on this host\n" + cpu_out.read_text().rstrip())
    if not junit_rows(report, cpu_xml, "6 cpu tests on the gpu host"):
        report.add("6 cpu tests on the gpu host", "tests/test_ddp.py tests/test_runner.py", "error", None, "exit",
                   cpu_tests.returncode)
    cpu_xml.unlink(missing_ok=True)
    cpu_out.unlink(missing_ok=True)
    bench_check(report, left(240))
    failed = report.failed
    report.log(f"\ngpu-check: {len(report.rows)} rows, {len(failed)} failed -> {report.csv_path}, {report.log_path}")
    for row in failed:
        report.log(f"  FAILED {row['check']}: {row['item']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
