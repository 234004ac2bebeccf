"""Both tokenizers round-trip every document of the tang-poems corpus exactly."""

from __future__ import annotations

import pytest

from aigc.data.tokenizer import DOC_TOKEN, Tokenizer, train_bpe_tokenizer, train_char_tokenizer
from aigc.errors import AigcError
from conftest import tang_documents


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return tang_documents()


def assert_round_trip(tok: Tokenizer, docs: list[str]) -> None:
    ids = tok.encode_batch(docs)
    decoded = tok.tk.decode_batch(ids, skip_special_tokens=True)
    bad = [i for i, (d, e) in enumerate(zip(docs, decoded)) if d != e]
    assert not bad, f"{len(bad)} documents differ, first: {docs[bad[0]]!r} -> {decoded[bad[0]]!r}"


def test_char_tokenizer_round_trips_the_whole_corpus(corpus, tmp_path):
    tok = train_char_tokenizer(corpus)
    assert len(corpus) > 57_000
    assert tok.eot_id == 0 and tok.tk.id_to_token(0) == DOC_TOKEN
    ids = tok.encode_batch(corpus[:100])
    assert all(len(i) == len(d) for i, d in zip(ids, corpus[:100]))  # one token per character
    assert_round_trip(tok, corpus)
    tok.save(tmp_path / "tokenizer.json")
    assert_round_trip(Tokenizer.load(tmp_path / "tokenizer.json"), corpus)


def test_bpe_tokenizer_round_trips_the_whole_corpus(corpus, tmp_path):
    tok = train_bpe_tokenizer(corpus[::5], vocab_size=2000, show_progress=False)  # trained on a fifth, tested on all
    assert tok.kind == "bpe" and tok.vocab_size == 2000
    assert_round_trip(tok, corpus)
    tok.save(tmp_path / "tokenizer.json")
    again = Tokenizer.load(tmp_path / "tokenizer.json")
    assert_round_trip(again, corpus)
    # byte-level: text it never saw (English, emoji, odd spacing) still round-trips
    odd = ["  Hello,\tworld!  \n\n", "emoji 😀 and é", "\r\nmixed\r\n"]
    assert again.tk.decode_batch(again.encode_batch(odd), skip_special_tokens=True) == odd
    # BPE compresses: fewer tokens than UTF-8 bytes (a 2000-token vocabulary cannot hold
    # the 9,000 characters of the corpus, so it needs more tokens than characters)
    assert sum(map(len, tok.encode_batch(corpus[:500]))) < sum(len(d.encode()) for d in corpus[:500])


def test_document_boundary_token_is_special():
    tok = train_char_tokenizer(["ab", "c"])
    ids = tok.encode(f"a{DOC_TOKEN}b")
    assert ids == [tok.encode("a")[0], tok.eot_id, tok.encode("b")[0]]
    assert tok.decode(ids) == "ab"


def test_unknown_character_is_named():
    tok = train_char_tokenizer(["春风"])
    with pytest.raises(AigcError, match=r"'x' \(U\+0078\)"):
        tok.encode("春x")
