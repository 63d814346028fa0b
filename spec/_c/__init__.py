"""C declarations: what spec calls in llama.cpp (``cimport`` only; no Python module here)."""
