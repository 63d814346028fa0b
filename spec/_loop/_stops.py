"""Stop strings: find the first one in a sequence's output as its tokens arrive."""
from __future__ import annotations

import codecs
from bisect import bisect_left
from typing import Callable, Sequence


class StopScanner:
    """Decodes a sequence's generated tokens once each, as they arrive, and finds the first
    stop string in their text.

    A speculative step accepts several tokens at once, so a stop string may end inside a step's
    tokens: :attr:`n_keep` is then the number of tokens up to the one completing it, and
    :attr:`text` ends where it begins. :meth:`feed` holds back an end of the text that a stop
    string starts with, so a stream never shows part of one.
    """

    def __init__(self, token_to_piece: Callable[[int], bytes], stop: Sequence[str] = ()):
        self._piece = token_to_piece
        self._stop = list(stop)
        self._hold = max(map(len, self._stop), default=1) - 1   # longest proper stop prefix
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._text = ""
        self._ends: list[int] = []          # _ends[k]: length of the text after token k
        self._shown = 0                     # characters already returned by feed / close
        self.n_keep: int | None = None      # set once a stop string is found

    @property
    def found(self) -> bool:
        """A stop string was found."""
        return self.n_keep is not None

    @property
    def text(self) -> str:
        """The text so far, up to the first stop string once one is found."""
        return self._text

    def feed(self, tokens) -> str:
        """Take the tokens of ``tokens`` (everything generated so far) not seen yet; returns the
        text now safe to show. Once a stop string is found, nothing more is taken."""
        if self.found:
            return ""
        start = len(self._text)
        pieces = []
        for t in tokens[len(self._ends):]:
            pieces.append(self._decoder.decode(self._piece(int(t))))
            self._ends.append(self._ends[-1] + len(pieces[-1]) if self._ends else len(pieces[-1]))
        self._text += "".join(pieces)
        if self._stop:
            lo = max(0, start - self._hold)
            hits = [(i, len(s)) for s in self._stop if (i := self._text.find(s, lo)) >= 0]
            if hits:
                cut, n = min(hits)
                self.n_keep = bisect_left(self._ends, cut + n) + 1
                self._text = self._text[:cut]
                return self._show(cut)
        return self._show(len(self._text) - self._held_back())

    def close(self) -> str:
        """The end of the output: flush the decoder; returns the text not shown yet."""
        if not self.found:
            self._text += self._decoder.decode(b"", final=True)
        return self._show(len(self._text))

    def _held_back(self) -> int:
        """Length of the longest end of the text that a stop string starts with."""
        text = self._text
        for k in range(min(self._hold, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self._stop):
                return k
        return 0

    def _show(self, upto: int) -> str:
        if upto <= self._shown:
            return ""
        out, self._shown = self._text[self._shown:upto], upto
        return out
