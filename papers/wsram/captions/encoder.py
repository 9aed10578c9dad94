"""Turn torchvision's ImageNet VGG-16 weights into a frozen encoder for the caption model (encoder_weights).

    python -m papers.wsram.captions.encoder vgg16-397923af.pth vgg16.safetensors
    python papers/wsram/captions/train.py --config flickr8k --set encoder_weights=vgg16.safetensors ...

SRC is the state dict torchvision's `vgg16(weights=...)` loads, read with weights_only=True (torchvision is
not needed; nothing is downloaded). Its `features` are conv, ReLU pairs with a max-pool closing each stage
(convs at 0, 2 | 5, 7 | 10, 12, 14 | 17, 19, 21 | 24, 26, 28); MultiScaleCNN keeps each stage in an
nn.Sequential of conv, ReLU, ..., max-pool, so `features.<k>` becomes `stages.<s>.<2 i>`. The classifier is
dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from core.cli import ArgumentParser, main_guard
from core.errors import UserError
from core.runs import read_state_dict

VGG16_CONVS = (2, 2, 3, 3, 3)
"""3x3 convs per stage of VGG-16 (the flickr8k config's convs_per_stage)."""


def vgg16_to_encoder(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """MultiScaleCNN's state dict (stages.<s>.<2 i>.weight/bias) from a torchvision vgg16 state dict."""
    out, k = {}, 0
    for s, n in enumerate(VGG16_CONVS):
        for i in range(n):
            for name in ("weight", "bias"):
                key = f"features.{k}.{name}"
                if key not in state:
                    raise UserError(f"not a torchvision vgg16 state dict: no {key}")
                out[f"stages.{s}.{2 * i}.{name}"] = state[key]
            k += 2  # the conv and its ReLU
        k += 1  # the stage's max-pool
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("src", type=Path, help="torchvision vgg16 state dict (.pth)")
    parser.add_argument("dst", type=Path, help="the .safetensors file to write, for encoder_weights")
    args = parser.parse_args(argv)
    save_file(vgg16_to_encoder(read_state_dict(args.src)), str(args.dst))
    print(f"wrote {args.dst}")
    return args.dst


if __name__ == "__main__":
    main_guard(main)
