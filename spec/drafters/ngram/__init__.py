"""llama.cpp's n-gram drafters in typed Cython (public in :mod:`spec.ngram`)."""
