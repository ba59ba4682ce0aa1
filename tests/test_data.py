import json

import pytest

from mmdlm.data import load_text_splits, pack_texts, stdlib_corpus


def test_stdlib_split_is_deterministic_and_disjoint():
    train, val, info = stdlib_corpus(max_files=60)
    train2, val2, info2 = stdlib_corpus(max_files=60)
    assert info == info2 and info.files_sha256 and info.train_docs == len(train) > 0
    assert set(train["path"]).isdisjoint(val["path"])
    assert list(val["path"]) == list(val2["path"])


def test_local_text_files(text_files):
    train, val, info = load_text_splits("local", data_files=text_files)
    assert len(train) + len(val) == info.train_docs + info.validation_docs > 0


def test_jsonl_with_custom_column(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"body": f"x = {i}\n"}) for i in range(20)))
    train, _, _ = load_text_splits("local", data_files=[str(path)], text_column="body")
    assert "text" in train.column_names
    with pytest.raises(ValueError, match="text column 'content' not in"):
        load_text_splits("local", data_files=[str(path)], text_column="content")


def test_missing_empty_and_unknown_datasets(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_splits("local", data_files=[str(tmp_path / "nope.txt")])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ValueError, match="no non-empty text"):
        load_text_splits("local", data_files=[str(empty)])
    with pytest.raises(ValueError, match="could not load dataset"):
        load_text_splits("no-such-org/no-such-dataset-xyz")
    odd = tmp_path / "data.xml"
    odd.write_text("<a/>")
    with pytest.raises(ValueError, match="format"):
        load_text_splits("local", data_files=[str(odd)])


def test_packing(tokenizer):
    rows = pack_texts(["ab", "cd"], tokenizer, 2)
    assert rows.shape[1] == 2 and tokenizer.eos_token_id in rows.flatten().tolist()
    with pytest.raises(ValueError, match="fewer than one sequence"):
        pack_texts(["a"], tokenizer, 1000)
