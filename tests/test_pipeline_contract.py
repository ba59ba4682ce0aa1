"""Every mmdlm pipeline runs the shared contract (tests/pipeline_contract.py)."""
import pytest
from conftest import tiny_causal_lm
from discrete_fixtures import tiny_pipeline
from pipeline_contract import PipelineContract
from test_dual_pipeline import make_pipe

from mmdlm.data import shapes as S
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.pipelines import TextDiffusionPipeline
from mmdlm.text.adapt import DiffusionLM


class MultimodalContract(PipelineContract):
    output_types = ("pil", "np", "pt")
    bad_inputs = [({"guidance_scale": -1.0}, "guidance"), ({"num_images_per_prompt": 0}, "num_images_per_prompt")]

    def inputs(self, n, generator):  # joint generation: both streams sampled, at temperature 1
        return dict(task="joint", num_images_per_prompt=n, num_inference_steps=3, temperature=1.0,
                    generator=generator, output_type="pt")

    def rows(self, out):
        return [(image, text) for image, text in zip(out.images, out.texts)]


class TestDualDiffusionPipeline(MultimodalContract):
    def make_pipeline(self):
        return make_pipe(train_word_tokenizer([S.caption(s) for s in S.all_scenes()[:400]]))


class TestUnifiedDiscretePipeline(MultimodalContract):
    def make_pipeline(self):
        return tiny_pipeline()


class TestTextDiffusionPipeline(PipelineContract):
    output_types = ("text", "ids")
    bad_inputs = [({"gen_length": -1}, "gen_length"), ({"cache": "bogus"}, "cache")]

    @pytest.fixture(autouse=True)
    def _tokenizer(self, tokenizer, tmp_path):
        self.tokenizer, self.tmp = tokenizer, tmp_path

    def make_pipeline(self):
        dlm = DiffusionLM.from_causal_lm(tiny_causal_lm("llama", self.tokenizer), self.tokenizer)
        dlm.save_pretrained(self.tmp / "dlm", tokenizer=self.tokenizer)
        return TextDiffusionPipeline.from_dlm(self.tmp / "dlm")

    def inputs(self, n, generator):
        return dict(prompt=["def f(x):"] * n, gen_length=6, num_inference_steps=3, temperature=1.0,
                    generator=generator)

    def rows(self, out):
        return list(out.sequences)
