"""spec: speculative decoding on llama.cpp (public API assembled at the end of the foundation)."""
