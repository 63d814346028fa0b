"""Every close order of the handles over llama.cpp memory (spec._runtime._handle's one rule).

Model, Context, a numpy view of the logits, a session, an engine and its stream are closed (or
dropped) in every order, in this thread and in another one: nothing crashes, a closed handle
refuses work with ClosedError, a borrower keeps working on what it borrowed until it goes, and
each handle is freed once its last borrower is gone (counted by ``_n_borrowers``). The sanitizer
run (.ci/sanitize) turns any read of freed memory here into a failure.
"""
from __future__ import annotations

import gc
import itertools
import threading

import numpy as np
import pytest

from spec import ClosedError, Context, DraftModelSession, Engine, Model

PROMPT = "The quick brown fox jumps over the lazy dog"


class Handles:
    """A target and a draft model, their contexts, a logits view and a session over them."""

    def __init__(self, pair):
        self.mt, self.md = Model(pair[0]), Model(pair[1])
        self.ct, self.cd = Context(self.mt, n_ctx=128), Context(self.md, n_ctx=128)
        self.session = DraftModelSession(self.ct, self.cd, 1, 4)
        self.prompt = self.mt.tokenize(PROMPT)
        self.ct.decode(self.prompt, all_logits=True)
        self.session.process()
        self.session.begin(0, self.prompt)
        self.view = self.ct.logits()
        self.expected_sum = float(np.sum(self.view))
        self.steps = {"model": self.close_models, "context": self.close_contexts,
                      "view": self.drop_view, "session": self.close_session}
        self.done = set()

    def close_models(self):
        self.mt.close()
        self.md.close()

    def close_contexts(self):
        self.ct.close()
        self.cd.close()

    def drop_view(self):
        self.view = None
        gc.collect()

    def close_session(self):
        self.session.close()
        self.session.close()                     # idempotent

    def run(self, name):
        self.steps[name]()
        self.done.add(name)
        self.check()

    def check(self):
        if "view" not in self.done:
            # the view borrows the context: its memory stays valid whatever else was closed
            assert float(np.sum(self.view)) == self.expected_sum
        if "session" in self.done or "context" in self.done:
            with pytest.raises(ClosedError):
                self.session.draft(0, len(self.prompt), int(self.prompt[-1]))
        else:
            # a closed model stays usable through the contexts that borrow it
            self.session.draft(0, len(self.prompt), int(self.prompt[-1]))
        if "context" in self.done:
            with pytest.raises(ClosedError):
                self.ct.logits()
        if "model" in self.done:
            with pytest.raises(ClosedError):
                self.mt.tokenize("x")
        # borrower counts: a context is borrowed by the live view and the open session
        view_alive = "view" not in self.done
        session_alive = "session" not in self.done
        assert self.ct._n_borrowers == view_alive + session_alive
        assert self.cd._n_borrowers == session_alive
        # a model is borrowed by its context until the context is freed
        ct_freed = "context" in self.done and not view_alive and not session_alive
        cd_freed = "context" in self.done and not session_alive
        assert self.mt._n_borrowers == (0 if ct_freed else 1)
        assert self.md._n_borrowers == (0 if cd_freed else 1)


@pytest.mark.parametrize("order", list(itertools.permutations(["model", "context", "view",
                                                               "session"])),
                         ids="-".join)
def test_every_close_order(pair, order):
    h = Handles(pair)
    for name in order:
        h.run(name)
    assert h.mt.closed and h.ct.closed and h.session.closed


@pytest.mark.parametrize("order", [("model", "context", "session", "view"),
                                   ("session", "view", "context", "model")], ids="-".join)
def test_close_orders_from_another_thread(pair, order):
    h = Handles(pair)
    for name in order:
        worker = threading.Thread(target=h.steps[name])
        worker.start()
        worker.join(timeout=30)
        assert not worker.is_alive()
        h.done.add(name)
        h.check()


def test_session_close_waits_for_a_draft_in_another_thread(pair):
    h = Handles(pair)
    errors = []

    def draft_many():
        try:
            for _ in range(200):
                h.session.draft(0, len(h.prompt), int(h.prompt[-1]))
        except ClosedError:
            pass                                  # closed between two calls: refused cleanly
        except BaseException as e:               # pragma: no cover - reported below
            errors.append(e)

    worker = threading.Thread(target=draft_many)
    worker.start()
    h.session.close()
    worker.join(timeout=60)
    assert not worker.is_alive() and not errors
    assert h.ct._n_borrowers == 1                # only the view is left


@pytest.mark.parametrize("order", list(itertools.permutations(["engine", "stream", "model"])),
                         ids="-".join)
def test_engine_and_stream_close_orders(pair, order):
    model = Model(pair[0])
    engine = Engine(model, drafter="suffix", n_ctx=256)
    pieces = engine.stream(PROMPT, max_tokens=20)
    first = next(pieces)
    assert isinstance(first, str)
    stream_open = True
    for name in order:
        if name == "engine":
            engine.close()
            engine.close()
        elif name == "model":
            model.close()
            assert model._n_borrowers == (1 if stream_open or not engine.ctx.closed else 0)
        else:
            pieces.close()
            stream_open = False
    assert engine.ctx.closed and model._n_borrowers == 0
    with pytest.raises(ClosedError):
        engine.generate(PROMPT, max_tokens=2)


def test_a_closed_session_refuses_an_engine_step(pair):
    from spec._loop._engine import Loop
    from spec._loop._params import Drafting
    h = Handles(pair)
    loop = Loop(h.ct, h.session, Drafting(4))
    h.session.close()
    with pytest.raises(ClosedError, match="DraftModelSession is closed"):
        loop.run([])
