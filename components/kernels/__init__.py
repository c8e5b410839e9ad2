"""Speed only, never needed for correctness: fused CPU ops (fused.py), their C loops (cpu_kernels.c,
built and loaded by c_loader.py), and the one switch that picks what runs (settings.py)."""
