"""Text sources, the document-level split and the prepared shards."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigc.config import DataConfig
from aigc.data.shards import TokenData, prepare, split_documents
from aigc.data.sources import read_documents
from aigc.errors import AigcError
from conftest import run_cli


def test_txt_one_document_per_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first line\n\n  \nsecond line\r\nthird\n", encoding="utf-8")
    assert read_documents(DataConfig(source=str(path))) == ["first line", "second line", "third"]


def test_txt_with_separator_lines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("静夜思\n床前明月光\n%\n\n春晓\n春眠不觉晓\n%\n", encoding="utf-8")
    docs = read_documents(DataConfig(source=str(path), separator="%"))
    assert docs == ["静夜思\n床前明月光", "春晓\n春眠不觉晓"]


def test_jsonl_field_and_directory_glob(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.jsonl").write_text('{"body": "二"}\n{"body": "三"}\n', encoding="utf-8")
    (tmp_path / "d" / "sub" / "a.txt").write_text("一\n", encoding="utf-8")
    (tmp_path / "d" / "skip.md").write_text("no\n", encoding="utf-8")
    cfg = DataConfig(source=str(tmp_path / "d"), glob="**/*.*[lt]", field="body")
    assert read_documents(cfg) == ["二", "三", "一"]


def test_named_dataset_is_shipped_and_simplified():
    docs = read_documents(DataConfig(dataset="tang-poems"))
    assert len(docs) == 57_599
    text = "".join(docs[:2000])
    assert "风" in text and "風" not in text  # simplified, not traditional
    with pytest.raises(AigcError, match="unknown dataset 'nope'"):
        read_documents(DataConfig(dataset="nope"))


def test_split_is_deterministic_document_level_and_never_empty():
    a = split_documents(1000, 0.1, seed=3)
    assert np.array_equal(a, split_documents(1000, 0.1, seed=3))
    assert not np.array_equal(a, split_documents(1000, 0.1, seed=4))
    assert 60 < a.sum() < 140
    two = split_documents(2, 0.01, seed=0)
    assert two.sum() == 1


def test_prepare_writes_shards_with_boundaries(small_corpus, tmp_path):
    folder = prepare(DataConfig(source=str(small_corpus)), tmp_path / "p", progress=False)
    data = TokenData(folder)
    meta = data.meta
    assert meta["dtype"] == "uint16"
    docs = [json.loads(line)["text"] for line in small_corpus.read_text(encoding="utf-8").splitlines()]
    s = meta["splits"]
    assert s["train"]["documents"] + s["val"]["documents"] == len(docs)
    train = np.asarray(data.splits["train"])
    assert train[0] == data.tokenizer.eot_id and train[-1] == data.tokenizer.eot_id
    assert (train == data.tokenizer.eot_id).sum() == s["train"]["documents"] + 1
    # the first train document decodes back from the shard
    end = int(np.argmax(train[1:] == data.tokenizer.eot_id)) + 1
    assert data.tokenizer.decode(train[1:end].tolist()) in docs


def test_prepare_cli_prints_counts(small_corpus, tmp_path):
    result = run_cli("prepare", "--source", str(small_corpus), "--out", str(tmp_path / "p"), "--tokenizer", "bpe",
                     "--vocab-size", "600", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "documents" in result.stdout and "tokens" in result.stdout and "bpe" in result.stdout
    assert TokenData(tmp_path / "p").tokenizer.vocab_size == 600
