"""lm-eval tasks shipped with mmdlm, their YAMLs beside their data (`mmdlm eval-lm --tasks ...`).

All three are built from the functions of the built-in corpus's held-out files (the validation
split of `mmdlm.data.corpus.stdlib_corpus`, which neither the AR teacher nor the DLM trained on):

- `mmdlm_stdlib_mc` (multiple choice, acc / acc_norm): a function up to a line (of at most
  `MAX_LINE` characters), that line among three lines of other held-out functions;
- `mmdlm_stdlib_line` (generate_until, exact match): the same functions, the line generated (the
  first line of the generation with text, compared without surrounding whitespace);
- `mmdlm_stdlib_ppl` (loglikelihood_rolling: word / byte perplexity, bits per byte): whole functions.

The data files are JSON lines read with datasets' json builder (`data.py`), so the tasks run
offline. `make lm-eval-tasks` (`lm_tasks.build()`) rebuilds them from this Python's standard
library (the shipped ones: Python 3.11).
"""
from __future__ import annotations

import json
import random
from pathlib import Path

TASKS_DIR = Path(__file__).parent
TASKS = ("mmdlm_stdlib_mc", "mmdlm_stdlib_line", "mmdlm_stdlib_ppl")
MAX_CHARS = 600  # a function (head and body) this long fits the shipped models' 256 tokens
MAX_LINE = 32


def build(folder: Path = TASKS_DIR, *, n_lines: int = 100, n_functions: int = 40, seed: int = 0) -> None:
    """Write stdlib_lines.jsonl (prompt, target, choices, label) and stdlib_functions.jsonl (text)."""
    from ...data.sft import load_sft_splits
    from ...io import atomic_write_text

    _, held_out, _ = load_sft_splits()
    functions = [f["prompt"] + f["response"] for f in held_out if len(f["prompt"]) + len(f["response"]) <= MAX_CHARS]
    rng = random.Random(seed)
    rng.shuffle(functions)
    # the line to find: a short one (at most MAX_LINE characters), after the first
    lines = {i: [k for k, line in enumerate(text.splitlines(keepends=True)) if 0 < len(line.strip()) <= MAX_LINE
                 and k > 0] for i, text in enumerate(functions)}
    functions = [text for i, text in enumerate(functions) if lines[i]]
    lines = [found for found in lines.values() if found]
    pool = sorted({line for text in functions for line in text.splitlines(keepends=True)[1:] if line.strip()})
    records = []
    for i, text in enumerate(functions[:n_lines]):
        rows = text.splitlines(keepends=True)
        k = rng.choice(lines[i])
        truth = rows[k]
        others = rng.sample([line for line in pool if line.strip() != truth.strip() and line not in rows], 3)
        # The prompt stops before the newline that opens the line, which tokenizers merge with the
        # indentation after it: each choice (and the generation) starts with that newline.
        choices = ["\n" + line.rstrip("\n") for line in (truth, *others)]
        rng.shuffle(choices)
        records.append({"prompt": "".join(rows[:k]).rstrip("\n"), "target": truth.strip(), "choices": choices,
                        "label": choices.index("\n" + truth.rstrip("\n"))})
    atomic_write_text(folder / "stdlib_lines.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(folder / "stdlib_functions.jsonl", "".join(
        json.dumps({"text": text}) + "\n" for text in functions[n_lines:n_lines + n_functions]))
