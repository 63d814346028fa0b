"""The drafter layer: the typed Drafter interface and every drafter (n-gram family, suffix tree,
Python drafters, chains, llama.cpp's own, model-based sessions). The public names are in
:mod:`spec.ngram` and :mod:`spec.sessions`."""
