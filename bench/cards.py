"""Model cards and diffusers' loader file for the shipped checkpoints in assets/, from the records
they ship with (run.json, log.csv): what every save and training run now writes by itself.

    python bench/cards.py       # (make cards)
"""
from __future__ import annotations

import json
from pathlib import Path

from mmdlm.cards import add_training
from mmdlm.pipelines import load_pipeline
from mmdlm.text.adapt import DiffusionLM
from mmdlm.training.trainer import last_validation

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def main() -> None:
    for folder in sorted(p for p in ASSETS.iterdir() if p.is_dir()):
        if (folder / "model_index.json").is_file():
            load_pipeline(folder).write_sharing_files(folder)
        elif (folder / "mmdlm.json").is_file():
            DiffusionLM.from_pretrained(folder).write_model_card(folder)
        if (folder / "run.json").is_file():
            record = json.loads((folder / "run.json").read_text())
            held_out, note = last_validation(folder / "log.csv"), ""
            if (folder / "average.json").is_file():  # weights averaged over stages: no run measured them
                average = json.loads((folder / "average.json").read_text())
                held_out = None
                note = (f"The shipped weights are the average of {', '.join(f'`{m}`' for m in average['models'])} "
                        f"(`{average['command']}`); this is the last one's training.")
            add_training(folder, {**record, "held_out": held_out}, note)
        print(f"{folder}: {(folder / 'README.md').read_text().splitlines()[1:3]}")


if __name__ == "__main__":
    main()
