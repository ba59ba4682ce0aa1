"""`mmdlm average`: a model soup, the averaged transformer weights of saved pipelines."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..provenance import command_line, versions


@dataclass
class AverageConfig:
    """Average the transformer weights of saved pipelines of one model (a model soup) into a new pipeline."""

    models: list[str] = field(default_factory=list, metadata={
        "help": "saved pipeline folders: two or more, with the same transformer architecture and tokenizer"})
    output: str | None = field(default=None, metadata={"help": "folder for the averaged pipeline"})
    weights: list[float] | None = field(default=None, metadata={
        "help": "one weight per model, normalised to sum 1 (default: equal)"})


def run(c) -> None:
    """Average saved pipelines' transformer weights; save the result with `average.json` (the
    sources and weights) inside it, atomically."""
    from ..io import atomic_dir, check_output_dir
    from ..pipelines.averaging import average_pipelines, normalised_weights

    if not c.models or not c.output:
        raise ValueError("give --models (two or more saved pipelines) and --output")
    if any(Path(m).resolve() == Path(c.output).resolve() for m in c.models):
        raise ValueError("--output must differ from every --models folder")
    out = check_output_dir(c.output, "--output")
    if out.is_dir() and any(out.iterdir()) and not (out / "average.json").is_file():
        # The result replaces the folder: only an earlier average (or an empty folder) may be replaced.
        raise ValueError(f"--output {out} holds files and is not an earlier mmdlm average output; give a new folder")
    weights = normalised_weights(c.weights, len(c.models))
    pipe = average_pipelines(c.models, weights)
    record = {"models": c.models, "weights": weights, "command": command_line(), "versions": versions()}
    with atomic_dir(c.output) as tmp:
        pipe.save_pretrained(tmp)
        (Path(tmp) / "average.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"{type(pipe).__name__} with the transformer weights of {len(c.models)} pipelines averaged saved to "
          f"{c.output}")
