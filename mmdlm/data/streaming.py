"""A corpus read as a stream, for sources bigger than the disk: documents are read (`datasets`
streaming), tokenised and packed into rows as training asks for them; nothing is prepared.

Each process reads its own part of the source (`split_dataset_by_node`: whole files when there
are at least as many as processes, else every process reads everything and keeps one document
in P), in the source's order, epoch after epoch (no shuffling: shuffle the source beforehand).
The position in the stream (`datasets`' `state_dict` after the last batch read) and the tokens
read but not yet trained on are the stream's checkpoint, one per process, so a resumed run goes
on exactly where the interrupted one stood, with the same number of processes. Unlike the
prepared corpus, the rows a process trains on depend on the number of processes: P processes
do not train like one process with grad_accum P.
"""
from __future__ import annotations

import torch

from .corpus import TextSplits
from .packing import document_tokens


class PackedStream:
    """Rows of `seq_len` tokens packed on the fly from `splits`' documents of `split`, this
    process's share (`rank` of `world`): `next_rows(n)` gives the next n, `state_dict` and
    `load_state_dict` (data: ints and a tensor) save and restore where the stream stands."""

    def __init__(self, splits: TextSplits, tokenizer, seq_len: int, *, split: str = "train", rank: int = 0,
                 world: int = 1):
        if splits.records is None:
            raise ValueError("streaming reads a `datasets` source (data files, a folder, a hub dataset); the "
                             "built-in corpus is prepared on disk (leave streaming off)")
        from datasets.distributed import split_dataset_by_node

        self.splits, self.tokenizer, self.seq_len, self.split = splits, tokenizer, seq_len, split
        self.rank, self.world = rank, world
        table = splits.records.table(split)
        self.shards = table.n_shards
        self.table = split_dataset_by_node(table, rank=rank, world_size=world) if world > 1 else table
        self.epoch, self.rows_this_epoch = 0, 0
        self.buffer: list[int] = []
        self._batches = None

    def _refill(self) -> bool:
        """Read the next batch of documents into the buffer; False at the end of the epoch."""
        if self._batches is None:
            self.table.set_epoch(self.epoch)
            self._batches = self.splits.document_batches(self.split, self.table)
        batch = next(self._batches, None)
        if batch is None:
            self._batches = None
            return False
        for ids in document_tokens([t for t in batch if t.strip()], self.tokenizer):
            self.buffer.extend(ids)
        return True

    def next_rows(self, n: int) -> torch.Tensor:
        """The next `n` rows (n, seq_len) of this process's stream, into the next epoch if need be."""
        need = n * self.seq_len
        while len(self.buffer) < need:
            if not self._refill():
                if self.rows_this_epoch == 0 and len(self.buffer) < self.seq_len:
                    raise ValueError(f"the streaming source ended before giving process {self.rank} of "
                                     f"{self.world} one sequence of {self.seq_len} tokens (it had "
                                     f"{len(self.buffer)}): add data or lower seq_len")
                self.epoch, self.rows_this_epoch = self.epoch + 1, 0
        rows = torch.tensor(self.buffer[:need], dtype=torch.long).view(n, self.seq_len)
        del self.buffer[:need]
        self.rows_this_epoch += n
        return rows

    def head(self, n: int) -> torch.Tensor | None:
        """Up to the first `n` rows of one pass over the stream (validation data), or None."""
        rows = []
        while len(rows) < n and (len(self.buffer) >= self.seq_len or self._refill()):
            if len(self.buffer) >= self.seq_len:
                rows.append(self.next_rows(1))
        return torch.cat(rows) if rows else None

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "rows_this_epoch": self.rows_this_epoch, "rank": self.rank, "world": self.world,
                "stream": self.table.state_dict(), "buffer": torch.tensor(self.buffer, dtype=torch.long)}

    def load_state_dict(self, state: dict) -> None:
        if (state["rank"], state["world"]) != (self.rank, self.world):
            raise ValueError(f"this checkpoint's stream belongs to process {state['rank']} of {state['world']}, not "
                             f"{self.rank} of {self.world}: a streaming run resumes with the same number of processes")
        self.epoch, self.rows_this_epoch = state["epoch"], state["rows_this_epoch"]
        self.table.set_epoch(self.epoch)
        self.table.load_state_dict(state["stream"])
        self.buffer = state["buffer"].tolist()
        self._batches = self.splits.document_batches(self.split, self.table)


def streamed_text(source: str, *, tokenizer, seq_len: int, data_files: list[str] | None = None,
                  text_column: str = "text", validation_fraction: float = 0.05, eval_rows: int = 0,
                  state=None, warn=print):
    """(training stream of this process, validation rows or None, CorpusInfo) of a streamed source.

    The validation rows (the first `eval_rows` of the validation split) are read by every process,
    so that every process evaluates the same rows. A source with fewer shards (files) than
    processes is read whole by every process: said in one line.
    """
    from accelerate import PartialState

    from .corpus import CorpusInfo

    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    state = state or PartialState()
    splits = TextSplits(source, data_files=data_files, text_column=text_column,
                        validation_fraction=validation_fraction, streaming=True)
    train = PackedStream(splits, tokenizer, seq_len, rank=state.process_index, world=state.num_processes)
    if state.num_processes > 1 and train.shards < state.num_processes:
        warn(f"the streaming source has {train.shards} shard(s) (files) for {state.num_processes} processes: every "
             "process reads all of it and keeps its share; give at least as many files as processes")
    validation = PackedStream(splits, tokenizer, seq_len, split="validation").head(eval_rows) if eval_rows else None
    info = CorpusInfo(source=source if not data_files else ",".join(data_files), train_docs=None,
                      validation_docs=None)
    return train, validation, info
