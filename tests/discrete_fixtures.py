"""Tiny components of the discrete backbone, built in milliseconds (nothing reaches a hub)."""
from __future__ import annotations

import torch
from diffusers import VQModel

from mmdlm.data.shapes import all_scenes, caption
from mmdlm.data.tokenizer import train_word_tokenizer
from mmdlm.multimodal.discrete import UnifiedDiscreteTransformer
from mmdlm.pipelines.unified_discrete import UnifiedDiscretePipeline
from mmdlm.schedulers import MaskedDiffusionScheduler

IMAGE_SIZE, GRID, CODEBOOK, TEXT_LENGTH = 16, 4, 16, 12


def tiny_vq(seed: int = 0, codebook: int = CODEBOOK, **overrides) -> VQModel:
    torch.manual_seed(seed)
    config = dict(block_out_channels=(8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 3,
                  up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=1, latent_channels=4,
                  num_vq_embeddings=codebook, norm_num_groups=4, mid_block_add_attention=False)
    vq = VQModel(**{**config, **overrides}).eval()
    vq.quantize.embedding.weight.data.normal_()  # spread the codes so that random images use several
    return vq


def tiny_tokenizer():
    return train_word_tokenizer([caption(s) for s in all_scenes()[:400]] + ["what shape ?"])


def tiny_transformer(tokenizer, seed: int = 0, fresh: bool = False, **overrides) -> UnifiedDiscreteTransformer:
    """A tiny transformer; unless `fresh`, its weights are perturbed away from the adaLN-Zero start
    (where every block is the identity), as a trained model's are."""
    torch.manual_seed(seed)
    config = dict(codebook_size=CODEBOOK, vocab_size=len(tokenizer), mask_token_id=tokenizer.mask_token_id,
                  sample_size=GRID, text_length=TEXT_LENGTH, num_layers=1, num_single_layers=1, num_attention_heads=2,
                  attention_head_dim=16, axes_dims_rope=(4, 6, 6), timestep_channels=32)
    model = UnifiedDiscreteTransformer(**{**config, **overrides}).eval()
    if not fresh:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.1)
    return model


def tiny_pipeline(seed: int = 0) -> UnifiedDiscretePipeline:
    tok = tiny_tokenizer()
    pipe = UnifiedDiscretePipeline(transformer=tiny_transformer(tok, seed), vqvae=tiny_vq(seed), tokenizer=tok,
                                   scheduler=MaskedDiffusionScheduler(schedule="cosine"), image_size=IMAGE_SIZE)
    pipe.set_progress_bar_config(disable=True)
    return pipe
