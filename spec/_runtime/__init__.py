"""The runtime layer: logging, ownership, signals, errors, and the handles over llama.cpp
(``Model``, ``Context``). See ARCHITECTURE.md."""
