"""The unmasking view: how a sequence fills in, step by step, as a terminal animation, GIF or HTML."""
from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

import torch

from ..io import atomic_write_text

MASK_GLYPH = "\u2591"  # light shade: one block per masked token
EOS_GLYPH = "\u23ce"  # return symbol: an end of text


def token_pieces(tokenizer, ids: list[int], *, context: int = 8) -> list[str]:
    """The text each token adds to the decoded sequence, spaces included (a word-level
    tokenizer joins words with spaces that no single token decodes to): the decoding of the
    token with up to `context` tokens before it, less that of those tokens. A character split
    across byte-level tokens goes to the token that completes it (the others add nothing);
    where the shorter text is still not a prefix of the longer, the token decoded alone stands in."""
    pieces = []
    for i, tok in enumerate(ids):
        window = ids[max(0, i - context): i]
        before = tokenizer.decode(window).rstrip("\ufffd")  # U+FFFD: an incomplete character so far
        text = tokenizer.decode(window + [tok]).rstrip("\ufffd")
        pieces.append(text[len(before):] if text.startswith(before) else tokenizer.decode([tok]))
    return pieces


def frame(tokenizer, ids: list[int], prev: list[int] | None, mask_token_id: int, *,
          eos_token_id: int | None = None) -> list[tuple[str, str]]:
    """One step as (text, state) per token, state in {masked, new, done} (or eos, when
    `eos_token_id` is given): `new` where `prev` held a mask."""
    out = []
    for i, piece in enumerate(token_pieces(tokenizer, ids)):
        tok = ids[i]
        lead = piece[: len(piece) - len(piece.lstrip())]
        if tok == mask_token_id:
            out.append((lead + MASK_GLYPH, "masked"))
        elif eos_token_id is not None and tok == eos_token_id:
            out.append((lead + EOS_GLYPH, "eos"))
        else:
            out.append((piece, "new" if prev is not None and prev[i] == mask_token_id else "done"))
    return out


def frames(tokenizer, history: list[torch.LongTensor], mask_token_id: int, *, row: int = 0,
           start: int = 0, eos_token_id: int | None = None) -> list[list[tuple[str, str]]]:
    """Per step, the tokens from `start` on as (text, state), state in {masked, new, done}."""
    out, prev = [], None
    for ids in history:
        seq = ids[row, start:].tolist()
        out.append(frame(tokenizer, seq, prev, mask_token_id, eos_token_id=eos_token_id))
        prev = seq
    return out


def frame_html(frame: list[tuple[str, str]]) -> str:
    """One frame as escaped HTML: a span per token with its state as class (style them with
    `.masked`, `.new`, `.eos`)."""
    return "".join(f'<span class="{state}">{html.escape(text)}</span>' for text, state in frame)


def play_terminal(all_frames, *, delay: float = 0.08, stream=sys.stdout) -> None:
    """Redraw the sequence in place after every step (ANSI): new tokens green, masks dim."""
    style = {"masked": "\033[2m{}\033[0m", "new": "\033[1;32m{}\033[0m", "done": "{}", "eos": "\033[2m{}\033[0m"}
    lines_drawn = 0
    for k, frame in enumerate(all_frames):
        text = "".join(style[s].format(t) for t, s in frame)
        if lines_drawn:
            stream.write(f"\033[{lines_drawn}F\033[J")
        header = f"step {k}/{len(all_frames) - 1}\n"
        stream.write(header + text + "\n")
        stream.flush()
        lines_drawn = header.count("\n") + text.count("\n") + 1
        time.sleep(delay)


def write_html(all_frames, path: str | Path, title: str = "mmdlm unmasking") -> None:
    """A self-contained page with a step slider and a play button."""
    data = json.dumps([[[t, s] for t, s in f] for f in all_frames])
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} pre{{font-size:15px;line-height:1.5;white-space:pre-wrap}}
.masked,.eos{{color:#bbb}} .new{{background:#c8f7c5;font-weight:bold}}</style></head><body>
<h3>{html.escape(title)}</h3>
<button id="play">play</button> <input id="step" type="range" min="0" max="{len(all_frames) - 1}" value="0">
<span id="label"></span><pre id="text"></pre>
<script>
const frames = {data};
const esc = s => s.replace(/&/g,"&amp;").replace(/</g,"&lt;");
function show(k) {{
  document.getElementById("text").innerHTML =
    frames[k].map(([t, s]) => `<span class="${{s}}">${{esc(t)}}</span>`).join("");
  document.getElementById("label").textContent = `step ${{k}} / ${{frames.length - 1}}`;
}}
const slider = document.getElementById("step");
slider.oninput = () => show(+slider.value);
document.getElementById("play").onclick = () => {{
  let k = 0;
  const id = setInterval(() => {{ slider.value = k; show(k); if (++k >= frames.length) clearInterval(id); }}, 120);
}};
show(0);
</script></body></html>
"""
    atomic_write_text(path, page)


def write_gif(all_frames, path: str | Path, *, width: int = 720, ms_per_frame: int = 120) -> None:
    """An animated GIF of the frames (PIL's default font; long sequences wrap)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    char_w, line_h, margin = 7, 14, 10
    per_line = (width - 2 * margin) // char_w
    colours = {"masked": (170, 170, 170), "new": (20, 140, 40), "done": (20, 20, 20), "eos": (170, 170, 170)}

    def layout(frame):
        x = y = 0
        placed = []
        for text, state in frame:
            for ch in text:
                if ch == "\n" or x >= per_line:
                    x, y = 0, y + 1
                    if ch == "\n":
                        continue
                placed.append((x, y, ch, state))
                x += 1
        return placed, y + 1

    laid = [layout(f) for f in all_frames]
    height = 2 * margin + line_h * (max(n for _, n in laid) + 1)
    images = []
    for k, (placed, _) in enumerate(laid):
        img = Image.new("RGB", (width, height), "white")
        draw = ImageDraw.Draw(img)
        draw.text((margin, margin), f"step {k}/{len(laid) - 1}", fill=(90, 90, 90), font=font)
        for x, y, ch, state in placed:
            draw.text((margin + x * char_w, margin + (y + 1) * line_h), ch, fill=colours[state], font=font)
        images.append(img)
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.gif")
    images[0].save(tmp, save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    tmp.replace(path)
