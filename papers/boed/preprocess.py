"""BOED's official input normalisations and flips (wsgharvey/ps-nogs), paper scale only: the CPU proxy's
digit canvases stay in [0, 1] (Split.normalise False, hflip off).

The released code normalises differently in its two halves:
- the design (posterior CNN g, image retrieval, EPE): `T.Normalize(CELEBHQ_MEAN, CELEBHQ_STD)`, ImageNet's
  mean and std (generating-near-optimal-glimpse-sequences/mea/config.py, mea/dataset.py `normalize`), and g
  trains on randomly flipped images (mea/variational_cnn/loader.py: `random_horizontal_flip=True` for the
  training loader, off for validation);
- the hard-attention network: `T.Normalize(mean=(0.5,)*channels, std=(0.5,)*channels)`, with random flips
  of the images without a supervision sequence (training-hard-attention/hq_loader.py).
"""

from __future__ import annotations

import torch

DESIGN_MEAN = (0.485, 0.456, 0.406)  # mea/config.py CELEBHQ_MEAN
DESIGN_STD = (0.229, 0.224, 0.225)  # mea/config.py CELEBHQ_STD


def design_input(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images (..., C, H, W) -> the design code's input, (x - mean) / std per RGB channel (a grey
    image: the channels' averages, ours)."""
    mean, std = torch.tensor(DESIGN_MEAN), torch.tensor(DESIGN_STD)
    if images.shape[-3] == 1:
        mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
    return (images - mean[:, None, None].to(images)) / std[:, None, None].to(images)


def hard_attention_input(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> the hard-attention network's input, (x - 0.5) / 0.5 (hq_loader.py)."""
    return (images - 0.5) / 0.5


def random_hflip(images: torch.Tensor) -> torch.Tensor:
    """T.RandomHorizontalFlip on a batch (B, C, H, W): each image mirrored with probability 0.5."""
    flip = torch.rand(len(images), device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)
