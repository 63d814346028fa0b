# The drafter interface the engine drives without the GIL. See _base.pyx for details.
#
# Protocol, per sequence id (0 <= seq < n_seq after reserve):
#   begin_seq(seq, prompt)       once per generation, with the tokens already in the target context
#   draft_seq(seq, history, id_last, n_max, out)
#                                history = every token in the target context (prompt + accepted
#                                output, without id_last); id_last = the token just sampled and not
#                                yet decoded. Writes up to n_max tokens to out and returns how many.
#   draft_tree_seq(seq, history, id_last, n_path_max, n_max, out, parents, &n_path)
#                                instead of draft_seq, for tree verification: the path draft
#                                (at most n_path_max tokens, parents -1, 0, 1, ...) and then
#                                other branches, parents before children, n_max tokens in all;
#                                probs (may be NULL): each token's estimated path probability
#   accept_seq(seq, n_accepted)  after verification: how many of the last draft were accepted
#                                (at most its length; once per draft)
#   follow_seq(seq, n_accepted)  instead of accept_seq, inside a chain (spec.drafters._chain), for a
#                                stage that needs every step's count (a model-based session): the
#                                target verified another stage's draft and accepted n_accepted of
#                                it (this drafter did not draft this step, or its draft lost)
#   end_seq(seq, output)         the generation finished; output = the generated tokens
#   reset_seq(seq)               before begin_seq of an unrelated generation (the engine's
#                                requests): drop the sequence's state. begin_seq alone keeps
#                                llama.cpp's semantics (state kept for a prompt that extends the
#                                last one, as its server reuses a slot's cached prefix).
# The c-level methods assume valid arguments (the Python wrappers and the engine check them).
cimport numpy as cnp

from libc.stdint cimport int32_t

from spec._c.typedefs cimport token_t


# ``tokens`` as a 1-D C-contiguous int32 ndarray of non-negative ids (ValueError/TypeError naming
# ``name`` otherwise). Shared by every drafter's Python-facing methods.
cdef cnp.ndarray as_token_array(object tokens, str name)
# ValueError if a draft returned to Python holds a negative id (O(draft length)).
cdef int check_drafted(const token_t* draft, Py_ssize_t n) except -1


cdef class Drafter:
    cdef readonly int n_seq            # sequence ids with state: 0 .. n_seq-1
    cdef unsigned char* begun          # begun[seq] != 0 once begin_seq ran for seq
    cdef Py_ssize_t* last_draft        # last_draft[seq]: length of the draft accept may take
    cdef Py_ssize_t* n_checked         # n_checked[seq]: history length draft() already scanned
    cdef object holder                 # the engine whose generation drives it, or None
    cdef object lock                   # held by the Python-level methods: one thread at a time

    cdef int reserve_seqs(self, int n_seq) except -1
    cdef int check_seq(self, int seq_id, bint need_begun) except -1   # ValueError if unknown
    cdef int check_free(self) except -1   # EngineBusyError while an engine's generation holds it
    # the Python draft methods' arguments: free, n_max >= 0, id_last >= 0, seq_id begun
    cdef int check_draft_args(self, Py_ssize_t n_max, int id_last, int seq_id) except -1
    # draft()'s history as a token array, scanning only what this sequence's earlier calls did not
    cdef cnp.ndarray checked_history(self, object history, int seq)
    cdef int begin_seq(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil
    cdef Py_ssize_t draft_seq(self, int seq, const token_t* history, Py_ssize_t n_history,
                              token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil
    cdef Py_ssize_t draft_tree_seq(self, int seq, const token_t* history, Py_ssize_t n_history,
                                   token_t id_last, Py_ssize_t n_path_max, Py_ssize_t n_max,
                                   token_t* out, int32_t* parents, float* probs,
                                   Py_ssize_t* n_path) except -1 nogil
    cdef int accept_seq(self, int seq, Py_ssize_t n_accepted) except -1 nogil
    cdef int follow_seq(self, int seq, Py_ssize_t n_accepted) except -1 nogil
    cdef int end_seq(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil
    cdef int reset_seq(self, int seq) except -1

    # Hooks for subclasses (the public c-level methods above do the bookkeeping, then call these).
    cdef int _reserve(self, int n_seq) except -1
    cdef int _begin(self, int seq, const token_t* prompt, Py_ssize_t n_prompt) except -1 nogil
    cdef Py_ssize_t _draft(self, int seq, const token_t* history, Py_ssize_t n_history,
                           token_t id_last, Py_ssize_t n_max, token_t* out) except -1 nogil
    # a drafter that has alternatives overrides this (default: the path draft alone); probs
    # (may be NULL) receives each token's estimated path probability
    cdef Py_ssize_t _draft_tree(self, int seq, const token_t* history, Py_ssize_t n_history,
                                token_t id_last, Py_ssize_t n_path_max, Py_ssize_t n_max,
                                token_t* out, int32_t* parents, float* probs,
                                Py_ssize_t* n_path) except -1 nogil
    cdef int _accept(self, int seq, Py_ssize_t n_accepted) except -1 nogil
    cdef int _follow(self, int seq, Py_ssize_t n_accepted) except -1 nogil
    cdef int _end(self, int seq, const token_t* output, Py_ssize_t n_output) except -1 nogil
    cdef int _reset_seq(self, int seq) except -1
