"""A built-in task with exact answers: templated multi-step arithmetic, GSM8K in miniature.

A problem is a short word problem or a short Python program; the response is a worked solution,
one step per line, the last line's result being the answer:

    Ann has 7 pens. She buys 5 more and gives 3 away. How many pens does she have now?
    7+5=12
    -3=9

    x = 7
    for i in range(3):
        x += 5
    print(x)
    x=7+5=12
    x=x+5=17
    x=x+5=22

A line restates the numbers it takes from the prompt and goes on from the result before it
without writing that result again (a word problem's line starts with the operator, a program's
names the variable), so every computed number appears exactly once. That matters for a diffusion
LM: a result written twice is learned as a copy of itself (whichever occurrence is visible),
which never helps at inference, where both are masked. The restated operands, operators and
names are predictable from the prompt; the results are not, and each step needs the one before.

Templates (`TEMPLATES`): ten word problems (add/subtract/multiply/divide in chains of two or three
steps, comparisons between two people, "k times as many") and four programs (assignments, a loop,
a product, an if/else). Numbers: operands in a prompt are 2..18, loop counts and factors 2..4;
every result is 0..40 and divisions are exact. With the shipped 4096-token BPE each of those
numbers is one token, after a space in the prompts (" 2" ... " 18") and after "=", an operator or
a newline in the solutions ("0" ... "40"), so no carrying hides inside a token.

Held-out split, by content rather than by seed: a problem belongs to it when the crc32 of its
tuple of prompt numbers (in the order they appear) is 0 mod 8, whatever the template, so no
held-out number combination occurs in training under any template; held-out word problems also
use only names and objects that training never uses (`HELD_OUT_WORDS`). Sizes:
`TRAIN_SIZE` distinct training problems and `HELD_OUT_SIZE` distinct held-out ones, drawn with a
fixed seed (templates uniformly), the same on every machine.
"""
from __future__ import annotations

import random
import re
import string
import zlib
from dataclasses import dataclass
from typing import Callable

NAME = "arithmetic"
TRAIN_SIZE = 50_000
HELD_OUT_SIZE = 1_000
SPLITS = ("train", "held_out")
OPERANDS, SMALL = range(2, 19), range(2, 5)  # prompt numbers; loop counts and factors
LARGEST = 40  # every result is 0..LARGEST
ANSWER = re.compile(r"=(-?\d+)\s*$")  # the last line's result

# (name, pronoun) pairs and objects: training uses the first group, held-out problems the second. The
# programs' variable names are shared: a solution writes them, and a model this small does not learn to
# write names it never saw (held-out variables cost the fine-tuned AR model most of its errors).
VARIABLES = ["x", "y", "z", "a", "b", "c", "n", "m", "s", "t", "total", "count", "sum", "items"]
TRAIN_WORDS = {
    "names": [("Ann", "she"), ("Ben", "he"), ("Cara", "she"), ("Dan", "he"), ("Eva", "she"), ("Finn", "he"),
              ("Gina", "she"), ("Hugo", "he"), ("Ivy", "she"), ("Jack", "he"), ("Kate", "she"), ("Leo", "he"),
              ("Mia", "she"), ("Noah", "he"), ("Olga", "she"), ("Paul", "he"), ("Rosa", "she"), ("Sam", "he")],
    "objects": ["pens", "apples", "books", "cards", "coins", "shells", "stamps", "marbles", "cookies", "stickers",
                "pencils", "eggs", "cups", "balls", "toys", "flowers"],
}
HELD_OUT_WORDS = {
    "names": [("Tara", "she"), ("Umar", "he"), ("Vera", "she"), ("Walt", "he"), ("Zoe", "she"), ("Omar", "he")],
    "objects": ["beads", "rocks", "tickets", "candles", "buttons", "plums"],
}


class _Invalid(Exception):
    """A result outside 0..LARGEST or an inexact division: draw the numbers again."""


def _apply(x: int, op: str, y: int) -> int:
    if op == "/" and x % y:
        raise _Invalid
    r = {"+": x + y, "-": x - y, "*": x * y, "/": x // y}[op]
    if not 0 <= r <= LARGEST:
        raise _Invalid
    return r


def step(left: str, value: int, op: str, y: int, var: str = "") -> tuple[str, int]:
    """One line `left op y=result` (`var=left op y=result` in a program) and its result; `left`
    is how the line writes `value`: the number itself, a variable's name, or nothing."""
    r = _apply(value, op, y)
    return f"{var}{'=' if var else ''}{left}{op}{y}={r}", r


def chain(start: int, *ops: tuple[str, int]) -> tuple[list[str], int]:
    """A word problem's steps: `7+5=12`, then each line goes on from the result before it without
    writing it again (`-3=9`). Returns (lines, last result)."""
    lines, x = [], start
    for i, (op, y) in enumerate(ops):
        line, x = step("" if i else str(start), x, op, y)
        lines.append(line)
    return lines, x


def _assign(v: dict) -> tuple[list[str], int]:
    first, r = step(str(v["a"]), v["a"], "+", v["b"], var=v["y"])
    second, answer = step(v["y"], r, "-", v["c"], var=v["x"])
    return [first, second], answer


def _loop(v: dict) -> tuple[list[str], int]:
    lines, r = [], v["a"]
    for i in range(v["n"]):
        line, r = step(v["x"] if i else str(v["a"]), r, "+", v["b"], var=v["x"])
        lines.append(line)
    return lines, r


def _product(v: dict) -> tuple[list[str], int]:
    first, r = step(str(v["a"]), v["a"], "*", v["b"], var=v["x"])
    second, r = step(v["x"], r, "-", v["c"], var=v["y"])
    last, answer = step(v["y"], r, "*", v["k"])
    return [first, second, last], answer


def _branch(v: dict) -> tuple[list[str], int]:
    taken = v["a"] > v["b"]
    first, r = step(str(v["a"]), v["a"], *(("-", v["b"]) if taken else ("+", v["c"])), var=v["x"])
    last, answer = step(v["x"], r, "*", v["k"])
    return [f"{v['a']}>{v['b']}={taken}", first, last], answer


@dataclass(frozen=True)
class Template:
    name: str
    family: str  # "word" or "program"
    text: str  # the prompt: numbers {a} {b} {c} {d} (OPERANDS), {k} {n} (SMALL); words {N} {M} {O} {He} {he} {x} {y}
    solve: Callable[[dict], tuple[list[str], int]]  # slot values -> (solution lines, answer)

    @property
    def number_slots(self) -> list[str]:
        fields = [f for _, f, _, _ in string.Formatter().parse(self.text) if f]
        return list(dict.fromkeys(f for f in fields if f in "abcdkn"))


TEMPLATES = [
    Template("buy_give", "word", "{N} has {a} {O}. {He} buys {b} more and gives {c} away. "
             "How many {O} does {he} have now?", lambda v: chain(v["a"], ("+", v["b"]), ("-", v["c"]))),
    Template("give_find", "word", "{N} has {a} {O}. {He} gives {b} of them to {M} and then finds {c} more. "
             "How many {O} does {N} have now?", lambda v: chain(v["a"], ("-", v["b"]), ("+", v["c"]))),
    Template("bags_more", "word", "{N} buys {a} bags with {b} {O} in each bag and {c} more {O}. "
             "How many {O} does {he} buy in all?", lambda v: chain(v["a"], ("*", v["b"]), ("+", v["c"]))),
    Template("boxes_use", "word", "{N} has {a} boxes of {b} {O}. {He} uses {c} of them. "
             "How many {O} are left?", lambda v: chain(v["a"], ("*", v["b"]), ("-", v["c"]))),
    Template("share", "word", "{N} shares {a} {O} equally among {b} friends. Then each friend gets {c} more. "
             "How many {O} does each friend have?", lambda v: chain(v["a"], ("/", v["b"]), ("+", v["c"]))),
    Template("more_than", "word", "{N} has {a} {O}. {M} has {b} more {O} than {N}. "
             "How many {O} do they have together?", lambda v: chain(v["a"], ("+", v["b"]), ("+", v["a"]))),
    Template("fewer_than", "word", "{N} has {a} {O}. {M} has {b} fewer {O} than {N}. "
             "How many {O} do they have together?", lambda v: chain(v["a"], ("-", v["b"]), ("+", v["a"]))),
    Template("times_as_many", "word", "{N} has {a} {O} and buys {b} more. {M} has {k} times as many {O} as {N}. "
             "How many {O} does {M} have?", lambda v: chain(v["a"], ("+", v["b"]), ("*", v["k"]))),
    Template("buy_give_buy", "word", "{N} has {a} {O}. {He} buys {b} more, gives {c} to {M} and then buys {d} "
             "more. How many {O} does {N} have now?",
             lambda v: chain(v["a"], ("+", v["b"]), ("-", v["c"]), ("+", v["d"]))),
    Template("packs_give_lose", "word", "{N} buys {a} packs of {b} {O}. {He} gives {c} away and loses {d}. "
             "How many {O} are left?", lambda v: chain(v["a"], ("*", v["b"]), ("-", v["c"]), ("-", v["d"]))),
    Template("assign", "program", "{x} = {a}\n{y} = {x} + {b}\n{x} = {y} - {c}\nprint({x})", _assign),
    Template("loop", "program", "{x} = {a}\nfor i in range({n}):\n    {x} += {b}\nprint({x})", _loop),
    Template("product", "program", "{x} = {a} * {b}\n{y} = {x} - {c}\nprint({y} * {k})", _product),
    Template("branch", "program", "{x} = {a}\nif {x} > {b}:\n    {x} = {x} - {b}\nelse:\n    {x} = {x} + {c}\n"
             "print({x} * {k})", _branch),
]


def is_held_out(numbers: tuple[int, ...]) -> bool:
    """Whether a tuple of prompt numbers belongs to the held-out split (about 1 in 8 tuples)."""
    return zlib.crc32(",".join(map(str, numbers)).encode()) % 8 == 0


def _draw(template: Template, rng: random.Random, words: dict, held_out: bool) -> dict:
    """One problem of `template` in the given split (numbers drawn again until they fit)."""
    while True:
        v = {s: rng.choice(SMALL if s in "kn" else OPERANDS) for s in template.number_slots}
        if is_held_out(tuple(v.values())) != held_out:
            continue
        w = _words(rng, words)
        try:
            lines, answer = template.solve({**v, **w})
        except _Invalid:
            continue
        return {"prompt": template.text.format(**v, **w) + "\n", "response": "\n".join(lines), "answer": answer,
                "template": template.name, "family": template.family, "numbers": list(v.values())}


def _words(rng: random.Random, words: dict) -> dict:
    (name, pronoun), (other, _) = rng.sample(words["names"], 2)
    x, y = rng.sample(VARIABLES, 2)
    return {"N": name, "M": other, "He": pronoun.capitalize(), "he": pronoun, "O": rng.choice(words["objects"]),
            "x": x, "y": y}


def problems(split: str, n: int, seed: int = 0) -> list[dict]:
    """`n` distinct problems of `split` ("train" or "held_out"): records with the prompt, the response
    (worked solution and answer line), the answer, the template, its family and the prompt numbers."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(f"{NAME}-{split}-{seed}")
    words = HELD_OUT_WORDS if split == "held_out" else TRAIN_WORDS
    out, seen = [], set()
    while len(out) < n:
        record = _draw(rng.choice(TEMPLATES), rng, words, split == "held_out")
        if record["prompt"] not in seen:
            seen.add(record["prompt"])
            out.append(record)
    return out


def arithmetic_splits(n_train: int | None = None, n_held_out: int | None = None):
    """(training records, held-out records, description) for SFT, `TRAIN_SIZE` and `HELD_OUT_SIZE`
    by default; the held-out records are the validation split (the trainer's validation loss) and
    the problems `mmdlm eval-task` and bench/sampling_task.py score."""
    n_train = TRAIN_SIZE if n_train is None else n_train
    n_held_out = HELD_OUT_SIZE if n_held_out is None else n_held_out
    info = {"source": NAME, "train_problems": n_train, "held_out_problems": n_held_out,
            "records": "templated multi-step arithmetic (word problems and program traces): prompt = problem, "
                       "response = one line per step, the last result the answer; held out: unseen number "
                       "tuples, names and objects"}
    return problems("train", n_train), problems("held_out", n_held_out), info


def parse_answer(text: str) -> int | None:
    """The result the response ends with (`...=N`), or None."""
    m = ANSWER.search(text)
    return int(m.group(1)) if m else None


def exact_match(texts: list[str], answers: list[int]) -> list[bool]:
    """Per problem: whether the generated text states the right answer."""
    if len(texts) != len(answers):
        raise ValueError(f"{len(texts)} texts for {len(answers)} answers")
    return [parse_answer(t) == a for t, a in zip(texts, answers)]
