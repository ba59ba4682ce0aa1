import pytest
import torch

from mmdlm.data.shapes import all_scenes, caption
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.multimodal import attention_mask, decode_captions, encode_captions, ensure_caption_tokens


@pytest.fixture(scope="module")
def words():
    return train_word_tokenizer([caption(s) for s in all_scenes()])


def test_canvas_encode_decode_round_trip(words):
    texts = [caption(s) for s in all_scenes()[::97]]
    ids = encode_captions(words, texts, 12)
    assert ids.shape == (len(texts), 12) and ids.dtype == torch.long
    eos = words.eos_token_id
    for row, text in zip(ids.tolist(), texts):
        n = len(text.split())
        assert eos not in row[:n] and row[n:] == [eos] * (12 - n)  # caption, then EOS to the end
    assert decode_captions(words, ids) == texts
    assert decode_captions(words, ids[0]) == texts[:1]
    full = encode_captions(words, "a small red circle left of a large blue square", 10)
    assert eos not in full.tolist()[0]  # exactly fills the canvas
    assert encode_captions(words, [], 4).shape == (0, 4)


def test_too_long_and_bad_inputs(words):
    with pytest.raises(ValueError, match="text 1 has 10 tokens but the text length is 8; shorten it"):
        encode_captions(words, ["a red circle", "a small red circle left of a large blue square"], 8)
    with pytest.raises(ValueError, match="text_length must be"):
        encode_captions(words, "a", 0)
    with pytest.raises(ValueError, match="not a string"):
        encode_captions(words, [3], 4)
    with pytest.raises(ValueError, match="fill must be"):
        encode_captions(words, "a", 4, fill="zeros")
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        decode_captions(words, torch.zeros(1, 2, 3, dtype=torch.long))


def test_placeholders_use_the_text_paths_parser(words):
    ids = encode_captions(words, ["a small <|mask:1|> circle above a<|mask:2|> square"], 12)
    mask, eos = words.mask_token_id, words.eos_token_id
    row = ids[0].tolist()
    assert row[2] == mask and row[6:8] == [mask, mask] and row[9:] == [eos] * 3
    assert decode_captions(words, ids) == ["a small circle above a square"]  # masks are special: dropped
    filled = ids.clone()
    filled[0, 2], filled[0, 6], filled[0, 7] = (words.convert_tokens_to_ids(w) for w in ("red", "large", "<eos>"))
    assert decode_captions(words, filled) == ["a small red circle above a large"]  # cut at the first EOS
    assert decode_captions(words, filled, stop_at_eos=False) == ["a small red circle above a large square"]
    with pytest.raises(ValueError, match="N >= 1"):
        encode_captions(words, ["a <|mask:0|>"], 8)


def test_pad_fill_and_attention_mask(words):
    ids = encode_captions(words, ["a red circle", "a small red circle left"], 7, fill="pad")
    assert ids[0].tolist()[3:] == [words.eos_token_id] + [words.pad_token_id] * 3
    mask = attention_mask(ids, words.pad_token_id)
    assert mask.tolist() == [[True] * 4 + [False] * 3, [True] * 6 + [False]]
    assert attention_mask(encode_captions(words, ["a"], 4), None).all()
    assert decode_captions(words, ids) == ["a red circle", "a small red circle left"]


def test_any_tokenizer_gets_a_mask_and_eos(tokenizer):
    # the BPE of the text path: EOS is also its pad token, and it has no mask token
    n = len(tokenizer)
    tok = ensure_caption_tokens(tokenizer)
    assert tok.mask_token_id == n and len(tok) == n + 1
    with pytest.raises(ValueError, match="pad token distinct from EOS"):
        encode_captions(tok, ["x"], 4, fill="pad")
    ids = encode_captions(tok, ["def f(x):<|mask:2|>"], 16)
    assert (ids == tok.mask_token_id).sum() == 2
    assert decode_captions(tok, encode_captions(tok, ["def f(x): return x"], 16)) == ["def f(x): return x"]


def test_unknown_words_are_refused_when_asked(words):
    text = "a tiny red circle left of a large <|mask:1|> square"
    assert words.unk_token_id in encode_captions(words, text, 12).tolist()[0]  # training data: kept as they are
    with pytest.raises(ValueError, match="text 0 has words this model's tokenizer does not know: 'tiny'"):
        encode_captions(words, text, 12, refuse_unknown=True)
    known = encode_captions(words, "a small red circle left of a large <|mask:1|> square", 12, refuse_unknown=True)
    assert words.unk_token_id not in known.tolist()[0]
