"""Model-based drafters: sessions over llama.cpp's ``common_speculative`` (public in
:mod:`spec.sessions`)."""
