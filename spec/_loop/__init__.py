"""The loop layer: sampling parameters, verification kernels, draft planning, the
draft -> verify -> accept loop and offline replay. See ARCHITECTURE.md."""
