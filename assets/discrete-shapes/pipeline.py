"""The mmdlm pipeline of this folder, for diffusers' generic loader:
DiffusionPipeline.from_pretrained(folder, trust_remote_code=True). Without running this file:
mmdlm.pipelines.load_pipeline(folder). Needs mmdlm installed."""
from mmdlm.pipelines import UnifiedDiscretePipeline  # noqa: F401
