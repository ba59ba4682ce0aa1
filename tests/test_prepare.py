"""Data prepared once on disk (mmdlm.data.prepare), and streamed (mmdlm.data.streaming): the rows are
the ones packing in memory gives, an unchanged input is reused and a changed one prepared again,
bad caches are refused in one line, nothing half-written is ever read, and a stream resumes exactly."""
import json
import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT

from mmdlm.data import pack_texts
from mmdlm.data import prepare as P
from mmdlm.data.corpus import TextSplits, is_validation, load_text_splits, prepared_text
from mmdlm.data.sft import encode_sft, prepared_sft
from mmdlm.data.streaming import PackedStream, streamed_text

MAIN = SimpleNamespace(is_main_process=True, process_index=0, num_processes=1, print=lambda *a: None)


@pytest.fixture
def corpus(tmp_path):
    """Two local text files (one document a line) and a data cache of this test's own."""
    files = []
    for i in range(2):
        path = tmp_path / f"part-{i}.txt"
        path.write_text("".join(f"{line.strip()} # part {i}, copy {k}\n" for k in range(4) for line in TEXT))
        files.append(str(path))
    return files, str(tmp_path / "cache")


def _prepare(files, cache, tokenizer, seq_len=16, state=MAIN, **kwargs):
    return prepared_text("local", tokenizer=tokenizer, seq_len=seq_len, data_files=files, data_cache=cache,
                         state=state, validation_fraction=0.2, **kwargs)


def test_prepared_rows_are_the_packed_rows(corpus, tokenizer):
    files, cache = corpus
    train, validation, info = _prepare(files, cache, tokenizer)
    texts, val_texts, _ = load_text_splits("local", data_files=files, validation_fraction=0.2)
    expected = pack_texts(texts["text"], tokenizer, 16)
    assert len(train) == len(expected) and train.shape == (len(expected), 16)
    assert torch.equal(train[torch.arange(len(train))], expected)
    assert torch.equal(train[[3, 0, 3]], expected[[3, 0, 3]])
    assert len(train[:5]) == 5 and torch.equal(train[:5][[4]], expected[[4]])
    assert torch.equal(validation[torch.arange(len(validation))], pack_texts(val_texts["text"], tokenizer, 16))
    assert info.train_docs == len(texts) and info.validation_docs == len(val_texts) > 0
    # a row's split never depends on the order or the number of records
    assert all(is_validation(t, 0.2) for t in val_texts["text"])
    assert not any(is_validation(t, 0.2) for t in texts["text"])
    with pytest.raises(IndexError):
        train[[len(train)]]


def test_the_builtin_corpus_prepared_equals_packed(tmp_path, tokenizer):
    train, validation, info = prepared_text(tokenizer=tokenizer, seq_len=32, max_files=20, data_cache=str(tmp_path),
                                            state=MAIN)
    texts, val_texts, info2 = load_text_splits(max_files=20)
    assert info == info2
    assert torch.equal(train[torch.arange(len(train))], pack_texts(texts["text"], tokenizer, 32))


def test_an_unchanged_input_is_reused_and_a_changed_one_prepared_again(corpus, tokenizer, monkeypatch):
    files, cache = corpus
    first, _, _ = _prepare(files, cache, tokenizer)
    folders = os.listdir(cache)
    monkeypatch.setattr(P, "write_tokens", lambda *a, **k: pytest.fail("an unchanged corpus was prepared again"))
    again, _, _ = _prepare(files, cache, tokenizer, seq_len=8)  # another seq_len reads the same tokens
    assert again.path == first.path and len(again) in (2 * len(first), 2 * len(first) + 1)
    monkeypatch.undo()
    with open(files[1], "a") as f:
        f.write("def changed():\n    pass\n")
    changed, _, _ = _prepare(files, cache, tokenizer)
    assert changed.path != first.path and len(os.listdir(cache)) == len(folders) + 1
    tokenizer.add_special_tokens({"mask_token": "<|mask|>"})  # another tokenizer: another folder
    assert _prepare(files, cache, tokenizer)[0].path != changed.path


def test_bad_caches_are_refused_in_one_line(corpus, tokenizer):
    files, cache = corpus
    train, _, _ = _prepare(files, cache, tokenizer)
    folder = train.path.parent
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps({**meta, "tokenizer": "0" * 64}))
    with pytest.raises(ValueError, match="made with another tokenizer; delete the folder"):
        _prepare(files, cache, tokenizer)
    (folder / "meta.json").write_text(json.dumps(meta))
    with open(train.path, "r+b") as f:  # a corrupt (truncated) token file
        f.truncate(100)
    with pytest.raises(ValueError, match=r"train.bin is truncated or damaged \(100 bytes"):
        _prepare(files, cache, tokenizer)
    (folder / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="is damaged"):
        _prepare(files, cache, tokenizer)
    blocker = os.path.join(os.path.dirname(cache), "a-file")
    open(blocker, "w").close()
    with pytest.raises(ValueError, match="data_cache .* is a file"):
        _prepare(files, blocker, tokenizer)


def test_an_interrupted_preparation_leaves_nothing_that_is_read(corpus, tokenizer, monkeypatch):
    files, cache = corpus
    real = P.write_tokens

    def dies(path, texts, tokenizer, dtype):
        real(path, texts, tokenizer, dtype)
        raise KeyboardInterrupt  # Ctrl-C after the first file

    monkeypatch.setattr(P, "write_tokens", dies)
    with pytest.raises(KeyboardInterrupt):
        _prepare(files, cache, tokenizer)
    assert os.listdir(cache) == []  # the temporary folder went with it
    monkeypatch.undo()
    os.makedirs(os.path.join(cache, ".text-0123.abc.tmp"))  # what a SIGKILL would leave
    train, _, _ = _prepare(files, cache, tokenizer)
    name = train.path.parent.name
    os.makedirs(os.path.join(cache, f".{name}.xyz.tmp"))  # a kill of an earlier preparation of this data
    assert sorted(os.listdir(cache)) == sorted([name, ".text-0123.abc.tmp", f".{name}.xyz.tmp"])
    (train.path.parent / "meta.json").unlink()
    _prepare(files, cache, tokenizer)  # prepared again: its own leftovers removed, another's kept
    assert sorted(os.listdir(cache)) == sorted([name, ".text-0123.abc.tmp"])


def test_the_other_processes_wait_for_the_main_one(corpus, tokenizer):
    files, cache = corpus
    other = SimpleNamespace(is_main_process=False, process_index=1, num_processes=2, print=print)
    result = {}
    waiting = threading.Thread(target=lambda: result.update(rows=_prepare(files, cache, tokenizer, state=other)[0]))
    waiting.start()
    time.sleep(1.0)
    assert waiting.is_alive() and not os.path.exists(cache)  # it waits, writing nothing
    main, _, _ = _prepare(files, cache, tokenizer)
    waiting.join(timeout=30)
    assert result["rows"].path == main.path


def test_prepared_sft_equals_encoding_in_memory(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"def f{i}(x):\n", "response": "    return x\n" * (i % 4 + 1)}) + "\n"
                            for i in range(40)))
    data, stats, source = prepared_sft("local", tokenizer=tokenizer, seq_len=24, data_files=[str(path)],
                                       validation_fraction=0.2, data_cache=str(tmp_path / "cache"), state=MAIN)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for split in ("train", "validation"):
        keep = [r for r in records if is_validation(json.dumps(r, sort_keys=True), 0.2) == (split == "validation")]
        expected, expected_stats = encode_sft(keep, tokenizer, 24)
        assert stats[split] == expected_stats and expected_stats.kept > 0
        rows = torch.arange(expected_stats.kept)
        for key in ("input_ids", "prompt_mask"):
            assert torch.equal(data[split][key][rows], expected[key]), (split, key)
    assert stats["train"].dropped_too_long > 0 and len(data["train"]["prompt_mask"][:3]) == 3


def test_a_stream_gives_the_packed_rows_and_resumes_exactly(corpus, tokenizer):
    files, _ = corpus
    splits = TextSplits("local", data_files=files, validation_fraction=0.2, streaming=True)
    expected = pack_texts(list(TextSplits("local", data_files=files, validation_fraction=0.2).documents("train")),
                          tokenizer, 16)
    stream = PackedStream(splits, tokenizer, 16)
    assert torch.equal(torch.cat([stream.next_rows(3) for _ in range(4)]), expected[:12])
    state = stream.state_dict()
    later = [stream.next_rows(5) for _ in range(len(expected) // 5 + 3)]  # into the second epoch
    assert stream.epoch == 1 and torch.equal(later[0], expected[12:17])
    again = TextSplits("local", data_files=files, validation_fraction=0.2, streaming=True)
    resumed = PackedStream(again, tokenizer, 16)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.next_rows(5), rows) for rows in later)
    # two processes read one file each: every document once
    parts = [PackedStream(splits, tokenizer, 16, rank=r, world=2) for r in range(2)]
    read = [[t for batch in splits.document_batches("train", p.table) for t in batch if t.strip()] for p in parts]
    assert [p.shards for p in parts] == [2, 2] and all(read)
    assert read[0] + read[1] == list(splits.documents("train"))  # file 0, then file 1
    with pytest.raises(ValueError, match="belongs to process 0 of 1, not 1 of 2"):
        parts[1].load_state_dict(state)


def test_stream_errors_and_warnings(corpus, tokenizer):
    files, _ = corpus
    with pytest.raises(ValueError, match="ended before giving process 0 of 1 one sequence of 100000 tokens"):
        streamed_text("local", tokenizer=tokenizer, seq_len=100_000, data_files=files)[0].next_rows(1)
    said = []
    two = SimpleNamespace(is_main_process=True, process_index=0, num_processes=2)
    train, validation, _ = streamed_text("local", tokenizer=tokenizer, seq_len=16, data_files=files[:1], state=two,
                                         warn=said.append, eval_rows=4, validation_fraction=0.2)
    assert said == ["the streaming source has 1 shard(s) (files) for 2 processes: every process reads all of it "
                    "and keeps its share; give at least as many files as processes"]
    assert validation.shape == (4, 16) and train.next_rows(2).shape == (2, 16)
    with pytest.raises(ValueError, match="streaming reads a `datasets` source"):
        PackedStream(TextSplits(max_files=3), tokenizer, 16)
