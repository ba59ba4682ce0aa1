"""Tiny models and data built in milliseconds; nothing here reaches a hub."""
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Prepared data (mmdlm.data.prepare) goes to a folder of this session, which the launched processes inherit.
os.environ.setdefault("MMDLM_CACHE", tempfile.mkdtemp(prefix="mmdlm-test-cache-"))

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from mmdlm.data.tokenizer import train_bpe

TEXT = [
    "def add(a, b):\n    return a + b\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "for i in range(10):\n    print(i * i)\n",
    "import os\nimport sys\n\nprint(os.getcwd(), sys.argv)\n",
] * 8

FAMILIES = {
    "gpt2": dict(n_embd=32, n_layer=1, n_head=2, n_positions=64),
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=64),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  num_key_value_heads=1, max_position_embeddings=64),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, head_dim=16, max_position_embeddings=64),
    "gpt_neox": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     max_position_embeddings=64),
    "stablelm": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                     num_key_value_heads=2, max_position_embeddings=64),
}


def pytest_collection_modifyitems(config, items):
    """Tests marked gpu run on a CUDA GPU: skipped where there is none (CI), run by `make gpu-check`
    (MMDLM_GPU_TEST_DEVICE=cpu runs tests/test_gpu.py on the CPU instead: a dry run of its dtype paths)."""
    if torch.cuda.is_available():
        return
    dry_run = bool(os.environ.get("MMDLM_GPU_TEST_DEVICE"))
    skip = pytest.mark.skip(reason="needs a CUDA GPU (make gpu-check runs it)")
    for item in items:
        if item.get_closest_marker("gpu") is not None and not (dry_run and item.path.name == "test_gpu.py"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tokenizer_factory():
    def make():
        return train_bpe(TEXT, vocab_size=300, min_frequency=1)
    return make


@pytest.fixture
def tokenizer(tokenizer_factory):
    return tokenizer_factory()


def tiny_causal_lm(family: str, tokenizer, attn_implementation: str = "sdpa", seed: int = 0):
    torch.manual_seed(seed)
    config = AutoConfig.for_model(family, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                  **FAMILIES[family])
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).eval()


@pytest.fixture
def teacher_dir(tmp_path, tokenizer):
    """A saved tiny LLaMA with its tokenizer and a training log, as `mmdlm pretrain` leaves a teacher."""
    folder = tmp_path / "teacher"
    tiny_causal_lm("llama", tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "log.csv").write_text("step,tokens,loss,lr,tokens_per_s,elapsed_s,val_loss\n2,64,5.0,0,1,1,4.9\n")
    return folder


@pytest.fixture
def text_files(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(TEXT))
    return [str(path)]


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide state (e.g. mixed precision); each test starts clean."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield


@pytest.fixture(autouse=True, scope="session")
def _remove_data_cache():
    yield
    if os.path.basename(os.environ["MMDLM_CACHE"]).startswith("mmdlm-test-cache-"):
        shutil.rmtree(os.environ["MMDLM_CACHE"], ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny models train ~10x faster on one thread when the machine's cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
