"""The bench's table: one row per combination (step time, tokens/s, achieved GFLOP/s, MFU against the
measured and the datasheet peak), printed and summarised (experiments/benchmark.py measures them)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.datasheets import datasheet_peak

COLUMNS = ["preset", "precision", "impl", "compile", "without", "threads", "batch_size", "step_ms", "step_ms_iqr",
           "tokens_per_s", "gflops", "peak_gflops", "mfu", "datasheet_gflops", "mfu_datasheet", "peak_mem_mb",
           "batch_ms", "batch_frac", "flops_per_token", "matmul_params", "formula", "device"]
FORMULA = "6*N + 12*L*d*T"


def row_for(cfg: dict[str, Any], result: dict[str, Any], peak: float) -> dict[str, Any]:
    step = result["step_s"]
    gflops = result["flops_per_token"] * result["tokens_per_step"] / step / 1e9
    d = result["dims"]
    sheet = datasheet_peak(result["device"], cfg["precision"])
    return {"preset": cfg["preset"], "precision": cfg["precision"], "impl": cfg["impl"], "compile": cfg["compile"],
            "without": cfg["without"] or "-", "threads": result["threads"], "batch_size": cfg["batch_size"],
            "step_ms": round(step * 1e3, 2), "step_ms_iqr": round(result["step_iqr_s"] * 1e3, 2),
            "tokens_per_s": round(result["tokens_per_step"] / step), "gflops": round(gflops, 1),
            "peak_gflops": round(peak, 1), "mfu": round(gflops / peak, 3),
            "datasheet_gflops": sheet, "mfu_datasheet": round(gflops / sheet, 3) if sheet else None,
            "peak_mem_mb": None if result["peak_mem_mb"] is None else round(result["peak_mem_mb"], 1),
            "batch_ms": round(result["batch_s"] * 1e3, 3), "batch_frac": round(result["batch_s"] / step, 4), "flops_per_token": result["flops_per_token"],
            "matmul_params": result["matmul_params"],
            "formula": f"6*{result['matmul_params']} + 12*{d['n_layers']}*{d['d_model']}*{d['context_length']}",
            "device": result["device"]}


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def cell(v: Any) -> str:
        return "yes" if v is True else "no" if v is False else "-" if v is None else f"{v:,}" if isinstance(v, int) else str(v)
    cells = [[cell(r[c]) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), flush=True)


def loadavg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "n/a"


def print_summary(rows: list[dict[str, Any]]) -> None:
    print(f"\nFLOPs per token = {FORMULA} (N = parameters but the lookup tables, L layers, d attention width, T context); "
          "mfu = achieved / measured matmul peak of that precision; mfu_datasheet = achieved / the datasheet's "
          "dense peak (bf16, or TF32 for fp32 on CUDA; experiments/datasheets.py); peak_mem_mb: CUDA max "
          "allocated, CPU peak RSS growth of the process from before the model was built")
    print_table(rows, [c for c in COLUMNS if c not in ("formula", "device")])
    for preset in dict.fromkeys(r["preset"] for r in rows):
        print(f"{preset}: flops_per_token = {next(r['formula'] for r in rows if r['preset'] == preset)}")
    base = {(r["preset"], r["impl"], r["compile"]): r for r in rows if r["precision"] == "fp32" and r["without"] == "-"}
    for r in rows:
        ref = base.get((r["preset"], r["impl"], r["compile"]))
        if r["precision"] == "bf16" and r["without"] == "-" and ref:
            print(f"{r['preset']} bf16 / fp32 tokens/s: {r['tokens_per_s'] / ref['tokens_per_s']:.2f}x")
    if any(r["mfu"] > 1 for r in rows):
        print("note: an mfu above 1 means that precision has no fast matmul path here (emulated bf16): its square-"
              "matmul 'peak' is slower than the model's small matmuls, so that mfu is not a fraction of a peak")
    print(f"loadavg at the end: {loadavg()}")
