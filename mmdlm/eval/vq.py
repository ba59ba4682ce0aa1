"""How much of an image survives the VQ round trip: the cap on a discrete backbone's accuracy.

A text-to-image model over VQ codes can at best draw what the VQ decoder can draw, so the
judges of `mmdlm.eval.imagetext` (the shapes parser, the digit classifier) are run on VQ
reconstructions of held-out images, beside their accuracy on the originals.
"""
from __future__ import annotations

import torch

from ..data import shapes as S


def reconstruction_report(tokenizer, datasets=("shapes", "digits"), *, n: int = 256, image_size: int = 32,
                          batch_size: int = 64) -> dict:
    """Per dataset: judge accuracy on originals and on reconstructions, mean squared error in
    [-1, 1], PSNR, and the share of the codebook the held-out images use."""
    from ..data.imagetext import load_image_text
    from ..images import to_pil

    report: dict = {"image_size": image_size, "codebook_size": tokenizer.codebook_size,
                    "downsample": tokenizer.downsample}
    for name in datasets:
        pixels, _ = load_image_text(name, split="test", n=n, image_size=image_size)
        codes = torch.cat([tokenizer.encode(pixels[i:i + batch_size]) for i in range(0, len(pixels), batch_size)])
        recon = torch.cat([tokenizer.decode(codes[i:i + batch_size]).cpu()
                           for i in range(0, len(codes), batch_size)])
        mse = float((recon - pixels).pow(2).mean())
        psnr = 10 * torch.log10(torch.tensor(4.0 / mse)).item()
        entry = {"n": len(pixels), "mse": round(mse, 5), "psnr_db": round(psnr, 2),
                 "codes_used": int(codes.unique().numel())}
        originals, rebuilt = to_pil(pixels), to_pil(recon)
        if name == "shapes":
            truths = [s for _, _, s in S.samples("test", n, image_size, 0)]
            for key, images in (("original", originals), ("reconstruction", rebuilt)):
                entry[f"parser_accuracy_{key}"] = round(
                    sum(S.same_scene(S.parse_image(im), t) for im, t in zip(images, truths)) / len(truths), 4)
        elif name == "digits":
            from ..data.digits import digit_classifier, split_arrays

            labels = split_arrays("test")[1][: len(pixels)]
            judge = digit_classifier(image_size)
            for key, images in (("original", originals), ("reconstruction", rebuilt)):
                entry[f"classifier_accuracy_{key}"] = round(float((judge.predict(images) == labels).mean()), 4)
        report[name] = entry
    return report
