"""LoRA (peft) on both multimodal transformers through `mmdlm train-mm`: only the adapters
train, the saved pipeline holds the merged weights, and the adapter is saved beside it."""
import copy
import json

import torch
from discrete_fixtures import IMAGE_SIZE, TEXT_LENGTH, tiny_vq
from peft import PeftModel

from mmdlm import cli
from mmdlm.pipelines import load_pipeline
from mmdlm.training.multimodal import LORA_FOLDER

MMDIT = {"backbone": "mmdit", "image_size": 16, "text_length": 12,
         "model_config": {"num_layers": 1, "attention_head_dim": 8, "num_attention_heads": 2,
                          "joint_attention_dim": 16, "caption_projection_dim": 16, "pooled_projection_dim": 16}}
DISCRETE = {"backbone": "discrete", "image_size": IMAGE_SIZE, "text_length": TEXT_LENGTH,
            "model_config": {"num_layers": 1, "num_single_layers": 1, "num_attention_heads": 2,
                             "attention_head_dim": 16, "axes_dims_rope": [4, 6, 6], "timestep_channels": 32}}


def _run(tmp_path, capsys, recipe: dict, name: str, **extra) -> int:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({"dataset": "shapes", "n_train": 16, "n_eval": 4, "max_steps": 3, "batch_size": 4,
                                "warmup_steps": 0, "lr": 1e-2, "output_dir": str(tmp_path / name), **recipe,
                                **extra}))
    return cli.main(["train-mm", "--config", str(path)])


def _check_lora(tmp_path, capsys, recipe):
    assert _run(tmp_path, capsys, recipe, "base") == 0
    base = load_pipeline(tmp_path / "base" / "model").transformer.state_dict()
    assert _run(tmp_path, capsys, recipe, "lora", pretrained=str(tmp_path / "base" / "model"), lora_r=4,
                lora_target_modules=["to_q", "to_v"]) == 0
    assert "LoRA r=4: training" in capsys.readouterr().out
    folder = tmp_path / "lora" / "model"
    merged = load_pipeline(folder).transformer
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, base[k])]
    assert changed and all(k.endswith(("to_q.weight", "to_v.weight")) for k in changed)  # only adapted layers
    # the adapter, on the base transformer, gives the merged weights
    adapted = PeftModel.from_pretrained(load_pipeline(tmp_path / "base" / "model").transformer,
                                        str(folder / LORA_FOLDER)).merge_and_unload()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(adapted.state_dict()[key], value)


def test_lora_on_the_mmdit(tmp_path, capsys):
    _check_lora(tmp_path, capsys, MMDIT)


def test_lora_on_the_discrete_transformer(tmp_path, capsys):
    tiny_vq().save_pretrained(tmp_path / "vq")
    _check_lora(tmp_path, capsys, {**DISCRETE, "image_tokenizer": str(tmp_path / "vq")})


def test_lora_needs_pretrained_weights(tmp_path, capsys):
    assert _run(tmp_path, capsys, MMDIT, "x", lora_r=4) == 2
    assert "lora_r > 0 adapts pretrained weights" in capsys.readouterr().err


def _merged(**lora):
    """(LoRA model, its state before merging, merged_transformer of it), checked against peft's merge_and_unload, for a
    tiny MM-DiT whose adapter weights are all drawn at random (peft starts B at zero: nothing to merge)."""
    from mmdlm.multimodal.mmdit import DualDiffusionTransformer2DModel
    from mmdlm.training.lora import apply_lora, merged_transformer

    torch.manual_seed(0)
    base = DualDiffusionTransformer2DModel(sample_size=8, patch_size=2, in_channels=3, out_channels=3, num_layers=1,
                                           attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                           caption_projection_dim=16, pooled_projection_dim=16, pos_embed_max_size=8,
                                           vocab_size=20, text_length=6)
    model = apply_lora(base, r=2, **lora)
    for name, p in model.named_parameters():
        if "lora_B" in name or "modules_to_save" in name:
            torch.nn.init.normal_(p)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_transformer(model)
    assert type(merged) is type(base) and isinstance(model, PeftModel)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the training model is untouched
    expected = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.state_dict().keys() == expected.keys()
    for key, value in merged.state_dict().items():
        torch.testing.assert_close(value, expected[key])
    return model, before, merged


def test_merging_leaves_the_training_model_and_shares_its_weights():
    # saving a LoRA model: the adapted layers are merged in copies, every other weight is shared, not copied
    model, before, merged = _merged(target_modules=["to_q", "to_v"])
    shared = {k.replace(".base_layer.", "."): v.data_ptr() for k, v in model.get_base_model().state_dict().items()}
    for key, value in merged.state_dict().items():
        adapted = ".to_q." in key or ".to_v." in key
        assert (value.data_ptr() == shared[key]) != adapted, key  # adapted layers copied, the rest shared
    assert not torch.equal(merged.state_dict()["transformer_blocks.0.attn.to_q.weight"],
                           before["base_model.model.transformer_blocks.0.attn.to_q.base_layer.weight"])


def test_merging_an_adapter_that_also_trains_whole_modules():
    # modules_to_save wrappers are peft's to unwrap: the merge equals merge_and_unload, the model stays as it was
    _, before, merged = _merged(target_modules=["to_q"], modules_to_save=["proj_out"])
    assert not torch.equal(merged.state_dict()["proj_out.weight"],
                           before["base_model.model.proj_out.original_module.weight"])
