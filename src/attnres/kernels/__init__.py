"""Optional fused GPU kernels (Triton). Nothing here is needed on CPU-only machines."""
