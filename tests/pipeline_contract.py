"""The contract every mmdlm pipeline keeps, in the spirit of diffusers' `PipelineTesterMixin`.

A pipeline's test class subclasses `PipelineContract` (and is named Test*, so pytest collects the
inherited tests) and gives:
- `make_pipeline()`: the pipeline from tiny components, built in milliseconds;
- `inputs(n, generator)`: call arguments for n samples of one input, in a setting where the
  generator matters (sampling at a temperature), so that per-sample generators are exercised;
- `rows(out)`: the output as one comparable item per sample;
- `output_types` and `bad_inputs` (extra argument overrides with the message they must raise).
"""
from __future__ import annotations

import pytest
import torch

from mmdlm.pipelines import load_pipeline


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(a, b) -> bool:
    """Equal ids and texts; images equal up to float noise of batched kernels."""
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        if a.is_floating_point():
            return a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-5)
        return torch.equal(a, b)
    return a == b


class PipelineContract:
    output_types: tuple[str, ...] = ()
    bad_inputs: list[tuple[dict, str]] = []

    def make_pipeline(self):
        raise NotImplementedError

    def inputs(self, n: int, generator) -> dict:
        raise NotImplementedError

    def rows(self, out) -> list:
        raise NotImplementedError

    @pytest.fixture
    def pipe(self):
        pipe = self.make_pipeline()
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def test_a_seed_fixes_the_output(self, pipe):
        assert same(self.rows(pipe(**self.inputs(2, gen(0)))), self.rows(pipe(**self.inputs(2, gen(0)))))
        assert not same(self.rows(pipe(**self.inputs(2, gen(0)))), self.rows(pipe(**self.inputs(2, gen(1)))))

    def test_save_and_load_round_trip(self, pipe, tmp_path):
        before = self.rows(pipe(**self.inputs(2, gen(0))))
        pipe.save_pretrained(tmp_path / "pipe")
        again = load_pipeline(tmp_path / "pipe")
        again.set_progress_bar_config(disable=True)
        assert type(again) is type(pipe)
        assert same(self.rows(again(**self.inputs(2, gen(0)))), before)

    def test_diffusers_generic_loader_and_model_card(self, pipe, tmp_path, monkeypatch):
        from diffusers import DiffusionPipeline
        from diffusers.utils import dynamic_modules_utils
        from huggingface_hub import ModelCard

        monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))  # not ~/.cache
        before = self.rows(pipe(**self.inputs(2, gen(0))))
        pipe.save_pretrained(tmp_path / "pipe")
        with pytest.raises(ValueError, match="trust_remote_code=True"):  # diffusers runs a folder's code when told
            DiffusionPipeline.from_pretrained(tmp_path / "pipe")
        again = DiffusionPipeline.from_pretrained(tmp_path / "pipe", trust_remote_code=True)
        again.set_progress_bar_config(disable=True)
        assert type(again) is type(pipe)
        assert same(self.rows(again(**self.inputs(2, gen(0)))), before)
        card = ModelCard.load(tmp_path / "pipe" / "README.md")
        assert card.data.library_name == "diffusers" and "mmdlm" in card.data.tags
        assert "trust_remote_code=True" in card.text and "load_pipeline" in card.text

    def test_a_generator_per_sample_gives_each_sample_what_it_gives_alone(self, pipe):
        batch = self.rows(pipe(**self.inputs(2, [gen(1), gen(2)])))
        alone = [self.rows(pipe(**self.inputs(1, [gen(seed)])))[0] for seed in (1, 2)]
        assert same(batch, alone)
        with pytest.raises(ValueError, match="3 generators for a batch of 2"):
            pipe(**self.inputs(2, [gen(0), gen(1), gen(2)]))

    def test_callbacks_see_every_step_and_may_replace_tensors(self, pipe):
        names = list(pipe._callback_tensor_inputs)
        seen = []

        def record(p, i, t, tensors):
            assert p is pipe and set(tensors) == set(names)
            seen.append(i)
            return {}

        out = pipe(**self.inputs(1, gen(0)), callback_on_step_end=record, callback_on_step_end_tensor_inputs=names,
                   return_history=True)
        assert seen and seen == sorted(seen) and len(out.history) >= len(seen)
        assert same(self.rows(out), self.rows(pipe(**self.inputs(1, gen(0)))))  # returning {} changes nothing
        with pytest.raises(ValueError, match="callback tensor inputs must be among"):
            pipe(**self.inputs(1, gen(0)), callback_on_step_end=record, callback_on_step_end_tensor_inputs=["nope"])

    def test_output_types_and_tuples(self, pipe):
        for output_type in self.output_types:
            assert pipe(**{**self.inputs(1, gen(0)), "output_type": output_type}) is not None
        assert isinstance(pipe(**self.inputs(1, gen(0)), return_dict=False), tuple)
        with pytest.raises(ValueError, match="output_type"):
            pipe(**{**self.inputs(1, gen(0)), "output_type": "bogus"})

    def test_runs_in_bfloat16(self, pipe):
        pipe.to(torch.bfloat16)
        for row in self.rows(pipe(**self.inputs(2, gen(0)))):
            for item in row if isinstance(row, tuple) else (row,):
                assert not isinstance(item, torch.Tensor) or torch.isfinite(item.float()).all()

    def test_bad_inputs_get_clear_messages(self, pipe):
        common = [({"num_inference_steps": 0}, "num_inference_steps must be")]
        for overrides, message in common + self.bad_inputs:
            with pytest.raises(ValueError, match=message):
                pipe(**{**self.inputs(1, gen(0)), **overrides})
