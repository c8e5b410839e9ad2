"""Datasheet peaks of common GPUs: dense tensor-core TFLOP/s in bf16 and TF32, and plain float32.

The bench's MFU is reported against the matmul peak it measures and against these. Figures are
NVIDIA's product datasheets (H100 and H100 NVL, H200, A100 80GB, L40S, L4, A10); where a datasheet
gives tensor-core figures "with sparsity" only, the dense figure is half of it. A run at
`precision: fp32` on CUDA uses TF32 matmuls (train.py turns them on), so its peak is the TF32 one.
Only the boost-clock figures are given: a card held at lower clocks (power, heat) peaks lower.
"""
from __future__ import annotations

import re

# (pattern matched against torch.cuda.get_device_name(), most specific first) -> TFLOP/s, dense
PEAKS: list[tuple[str, dict[str, float]]] = [
    (r"H100.*NVL",  {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),    # H100 NVL
    (r"H100.*PCIe", {"bf16": 756.5, "tf32": 378.0, "fp32": 51.2}),    # H100 PCIe
    (r"H100",       {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),    # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (r"H200.*NVL",  {"bf16": 835.5, "tf32": 417.5, "fp32": 60.0}),    # H200 NVL
    (r"H200",       {"bf16": 989.4, "tf32": 494.7, "fp32": 66.9}),    # H200 SXM (the H100's rates, more memory)
    (r"A100",       {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),    # A100 SXM4 and PCIe, 40 and 80 GB
    (r"L40S",       {"bf16": 362.05, "tf32": 183.0, "fp32": 91.6}),   # L40S
    (r"\bL4\b",     {"bf16": 121.0, "tf32": 60.0, "fp32": 30.3}),     # L4
    (r"\bA10\b",    {"bf16": 125.0, "tf32": 62.5, "fp32": 31.2}),     # A10 (not A100, not A10G)
]


def datasheet_peak(device_name: str, precision: str) -> float | None:
    """The datasheet's dense peak in GFLOP/s for a run of `precision` (bf16 | fp32, which runs as TF32
    on CUDA) on the GPU named `device_name`; None for a device the table does not know."""
    column = "tf32" if precision == "fp32" else precision
    for pattern, peaks in PEAKS:
        if re.search(pattern, device_name):
            return peaks[column] * 1e3 if column in peaks else None
    return None
