"""Text metrics on hand-computed examples."""

from __future__ import annotations

import math

import pytest

from aigc.data.shards import bits_per_char
from aigc.evaluate.text import distinct_n, rarefied_distinct_n, repeated_ngram_share


def test_distinct_n():
    assert distinct_n([list("abab")], 1) == 0.5
    assert distinct_n([list("abab")], 2) == 2 / 3
    assert distinct_n([list("ab"), list("ab")], 2) == 0.5
    assert distinct_n([[]], 2) == 0.0


def test_rarefied_distinct_n_compares_sets_of_different_sizes():
    long, short = [list("abcabcabcabc")], [list("abcab")]  # the same text, one longer: raw distinct-2 differs
    assert distinct_n(long, 2) < distinct_n(short, 2)
    assert rarefied_distinct_n(long, 2, 11) == pytest.approx(distinct_n(long, 2))  # k = N: no subsampling
    assert rarefied_distinct_n(long, 2, 1) == pytest.approx(1.0)
    # by hand: 4 bigrams of "abcab" (ab, bc, ca, ab); 2 drawn are one kind only when both are ab (1 in 6)
    assert rarefied_distinct_n(short, 2, 2) == pytest.approx((2 - 1 / 6) / 2)
    assert rarefied_distinct_n(long, 2, 4) < rarefied_distinct_n([list("abcdefghij")], 2, 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="k=5"):
        rarefied_distinct_n(short, 2, 5)


def test_repeated_4gram_share():
    assert repeated_ngram_share([list("abcdefg")]) == 0.0
    assert repeated_ngram_share([list("abcabcabc")]) == 3 / 6  # abca bcab cabc abca bcab cabc
    assert repeated_ngram_share([list("abcd"), list("abcd")]) == 0.0  # repeats only within a sample


def test_bits_per_char():
    assert bits_per_char(math.log(2), 1.0) == 1.0
    assert math.isclose(bits_per_char(math.log(4), 0.5), 1.0)
