"""bench/sampling_length.py end to end on tiny models: every configuration at every length, the append's
tokens against the full refresh's, the goal and the rendered table."""
import json
import sys
from pathlib import Path

import torch
from conftest import tiny_causal_lm

from mmdlm.text.adapt import DiffusionLM

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import report  # noqa: E402
import sampling_length  # noqa: E402


def test_sampling_length_bench(tmp_path, tokenizer_factory, monkeypatch):
    teacher_tokenizer, dlm_tokenizer = tokenizer_factory(), tokenizer_factory()
    tiny_causal_lm("llama", teacher_tokenizer).save_pretrained(tmp_path / "teacher")
    teacher_tokenizer.save_pretrained(tmp_path / "teacher")
    dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", dlm_tokenizer), dlm_tokenizer)
    dlm.save_pretrained(tmp_path / "dlm", tokenizer=dlm_tokenizer)
    out = tmp_path / "length.json"
    monkeypatch.setattr(sys, "argv", ["sampling_length.py", "--teacher", str(tmp_path / "teacher"), "--dlm",
                                      str(tmp_path / "dlm"), "--lengths", "8", "64", "--block", "8",
                                      "--prompt-tokens", "16", "--rounds", "1", "--out", str(out),
                                      "--threads", str(torch.get_num_threads())])  # leaves the threads as they are
    sampling_length.main()
    result = json.loads(out.read_text())
    records = result["records"]
    assert [(r["method"], r["length"]) for r in records] == [(c["method"], n) for c in sampling_length.CONFIGS
                                                             for n in (8, 64)]
    assert all(r["ms_per_token"] > 0 and r["nfe_per_token"] == 1.0 for r in records)  # one token per forward
    assert [r["same_tokens_as_full_refresh"] for r in records if r["method"] == "block_dlm_cache_append"] == [True] * 2
    assert result["goal"]["length"] == 64 and result["goal"]["ratio_to_64"] == 1.0 and result["goal"]["met"]
    assert out.with_suffix(".png").exists()
    table = report.sampling_length(result).splitlines()
    assert table[0] == "| method | cache | 8 | 64 | 64 / 64 | NFE/token |"
    n = len(sampling_length.CONFIGS)
    assert [row.split(" | ")[0] for row in table[2:2 + n]] == [f"| {c['method']}" for c in sampling_length.CONFIGS]
    stale = [r for r in records if r.get("refresh_every")]
    assert len(stale) == 4 and all(0 <= r["tokens_as_every_block_refresh"] <= 1 for r in stale)
    assert "the share of their tokens that a full pass at every block start also wrote" in "\n".join(table)
    assert table[-1].startswith("- Goal: the best DLM configuration's cost per token at 64 within 1.2x")
