"""Text metrics on hand-computed examples."""

from __future__ import annotations

import math

from aigc.data.shards import bits_per_char
from aigc.evaluate.text import distinct_n, repeated_ngram_share


def test_distinct_n():
    assert distinct_n([list("abab")], 1) == 0.5
    assert distinct_n([list("abab")], 2) == 2 / 3
    assert distinct_n([list("ab"), list("ab")], 2) == 0.5
    assert distinct_n([[]], 2) == 0.0


def test_repeated_4gram_share():
    assert repeated_ngram_share([list("abcdefg")]) == 0.0
    assert repeated_ngram_share([list("abcabcabc")]) == 3 / 6  # abca bcab cabc abca bcab cabc
    assert repeated_ngram_share([list("abcd"), list("abcd")]) == 0.0  # repeats only within a sample


def test_bits_per_char():
    assert bits_per_char(math.log(2), 1.0) == 1.0
    assert math.isclose(bits_per_char(math.log(4), 0.5), 1.0)
