"""Chats under the tokenizer's chat template: one rendering for training (`mmdlm sft`) and prompting
(the text pipeline's `messages`, `mmdlm generate --chat`, lm-eval's `--apply_chat_template`).

A chat is a list of {"role": "system" | "user" | "assistant", "content": str}. `render_chat` is
transformers' `apply_chat_template` as text; the text is then tokenized like any prompt ([BOS] +
its tokens), so a chat-tuned model is prompted exactly as it was trained. `end_of_turn_id` is
the token the template closes an assistant turn with (ChatML's <|im_end|>, Llama 3's
<|eot_id|>), where generation stops.
"""
from __future__ import annotations

ROLES = ("system", "user", "assistant")
_PROBE = "mmdlm-end-of-turn-probe"


def check_chat(messages) -> list[dict]:
    """`messages` if it is a chat (a list of {role, content} dicts); a ValueError otherwise."""
    if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str) for m in messages):
        raise ValueError(f"messages must be a list of {{'role': {'|'.join(ROLES)}, 'content': str}}, "
                         f"got {messages!r:.200}")
    return messages


def render_chat(tokenizer, messages, *, add_generation_prompt: bool = True) -> str:
    """The text of the chat `messages` under the tokenizer's chat template; with
    `add_generation_prompt`, followed by the opening of the assistant's turn (what to generate from)."""
    check_chat(messages)
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template: give a plain prompt, or set tokenizer.chat_template")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def end_of_turn_id(tokenizer) -> int | None:
    """The special token that follows an assistant's answer under the chat template, or None when
    the template closes a turn with plain text (then EOS alone ends the answer)."""
    chat = [{"role": "user", "content": "?"}, {"role": "assistant", "content": _PROBE}]
    text = render_chat(tokenizer, chat, add_generation_prompt=False)
    after = text[text.rindex(_PROBE) + len(_PROBE):].strip()
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if not ids or tokenizer.convert_ids_to_tokens(ids[0]) not in tokenizer.get_added_vocab():
        return None
    return ids[0]
