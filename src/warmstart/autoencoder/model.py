"""The autoencoder itself: a light convolutional decoder from the encoder's feature map to pixels, SimMIM-style input
masking, the :class:`ImageAutoencoder` that trains both on the reconstruction loss, and
:func:`build_image_autoencoder`, which sizes the decoder and the mask patches for a backbone and an image size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from warmstart.autoencoder.features import spatial_feature_shape, spatial_features
from warmstart.config.objectives import AutoencoderArguments
from warmstart.errors import WarmstartError
from warmstart.export import contiguous_state

# Width below which the decoder stops halving its channels: thinner stages lose too much to rebuild colour and edges.
_DECODER_MIN_CHANNELS = 32
# Masks drawn in evaluation come from this seed, so that eval losses compare across evaluations and runs.
_EVAL_MASK_SEED = 0


@dataclass
class AutoencoderOutput(ModelOutput):
    """What :class:`ImageAutoencoder` returns.

    Attributes:
        loss: mean squared error against the (normalised) input pixels, over the masked pixels only when masking.
        reconstruction: the decoded images, ``(B, C, H, W)``, in the normalised pixel space of the input.
        mask: ``(B, 1, H, W)``, 1 where the input was masked; ``None`` without masking.
    """

    loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    mask: torch.Tensor | None = None


class ConvDecoder(nn.Module):
    """A light decoder from a ``(C, h, w)`` feature map to ``(out_channels, H, W)`` pixels.

    A 1x1 convolution to ``channels``, then stages of (nearest upsampling x2, 3x3 convolution, BatchNorm, GELU)
    halving the width each stage down to 32, as many stages as fit in ``H / h``, a 3x3 convolution to the pixels,
    and a bilinear resize when the size is still off (a ViT with 14-pixel patches).

    Args:
        in_channels: channels of the feature map.
        feature_hw: its ``(h, w)``.
        image_hw: the images' ``(H, W)``.
        channels: width of the first stage.
        out_channels: channels of the images.
    """

    def __init__(
        self,
        in_channels: int,
        feature_hw: tuple[int, int],
        image_hw: tuple[int, int],
        channels: int = 256,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.image_hw = tuple(image_hw)
        scale = min(image_hw[0] / feature_hw[0], image_hw[1] / feature_hw[1])
        num_stages = max(0, math.floor(math.log2(scale))) if scale >= 1 else 0
        floor = min(_DECODER_MIN_CHANNELS, channels)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, kernel_size=1)]
        width = channels
        for _ in range(num_stages):
            out = max(width // 2, floor)
            layers += [
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.Conv2d(width, out, kernel_size=3, padding=1, bias=False),  # BatchNorm has the bias
                nn.BatchNorm2d(out),
                nn.GELU(),
            ]
            width = out
        layers.append(nn.Conv2d(width, out_channels, kernel_size=3, padding=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pixels = self.layers(features)
        if tuple(pixels.shape[-2:]) != self.image_hw:
            pixels = F.interpolate(pixels, size=self.image_hw, mode="bilinear", align_corners=False)
        return pixels


def _draw_mask(
    batch: int, image_hw: tuple[int, int], patch_size: int, ratio: float, generator: torch.Generator | None
) -> torch.Tensor:
    """``(batch, 1, H, W)`` of 0 / 1, each image with exactly ``round(ratio * patches)`` (>= 1) masked patches."""
    grid_h, grid_w = image_hw[0] // patch_size, image_hw[1] // patch_size
    num_patches = grid_h * grid_w
    num_masked = max(1, round(ratio * num_patches))
    # drawn on the CPU: a seeded generator gives the same masks on every device
    order = torch.rand(batch, num_patches, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, num_patches)
    mask.scatter_(1, order[:, :num_masked], 1.0)
    mask = mask.view(batch, 1, grid_h, grid_w)
    return mask.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)


class ImageAutoencoder(nn.Module):
    """A timm encoder (``forward_features``) and a :class:`ConvDecoder`, trained to rebuild the input pixels.

    With ``mask_ratio > 0`` a random ``mask_ratio`` fraction of the ``mask_patch_size`` squares of each image is set
    to 0 (the dataset mean, after normalisation) before the encoder, and the loss covers the masked pixels only:
    SimMIM's input masking, which CNNs and ViTs take alike, with MAE's loss. Training draws masks from a generator
    seeded with ``mask_seed`` (or torch's global one, seeded by the Trainer); evaluation from a generator seeded
    afresh each forward, so eval losses compare across evaluations and runs.

    Args:
        encoder: the timm model.
        decoder: maps the encoder's feature map to pixels.
        mask_ratio: fraction of patches masked, in [0, 1).
        mask_patch_size: side of a masked square in pixels; it must divide the image size.
        mask_seed: seeds the training masks.
    """

    main_input_name = "pixel_values"  # what the Trainer counts and logs as the input

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        mask_ratio: float = 0.0,
        mask_patch_size: int = 1,
        mask_seed: int | None = None,
    ):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise WarmstartError(f"--mask_ratio must be in [0, 1), got {mask_ratio}")
        if mask_patch_size < 1:
            raise WarmstartError(f"--mask_patch_size must be a positive integer, got {mask_patch_size}")
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = mask_ratio
        self.mask_patch_size = mask_patch_size
        self._train_masks = None if mask_seed is None else torch.Generator().manual_seed(mask_seed)

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return contiguous_state(super().state_dict(*args, **kwargs))

    # ``return_loss`` defaulting to True is how the Trainer knows to compute eval_loss from a batch with no labels.
    def forward(self, pixel_values: torch.Tensor, return_loss: bool = True) -> AutoencoderOutput:
        """Reconstructs ``pixel_values`` ``(B, C, H, W)``, normalised as the encoder expects.

        Returns:
            An :class:`AutoencoderOutput`; ``loss`` only when ``return_loss``.

        Raises:
            WarmstartError: the mask patch size does not divide the image size.
        """
        mask = None
        inputs = pixel_values
        if self.mask_ratio > 0:
            height, width = pixel_values.shape[-2:]
            if height % self.mask_patch_size or width % self.mask_patch_size:
                raise WarmstartError(
                    f"--mask_patch_size {self.mask_patch_size} does not divide the image size {height}x{width}: use "
                    f"a divisor of {math.gcd(height, width)}"
                )
            generator = self._train_masks if self.training else torch.Generator().manual_seed(_EVAL_MASK_SEED)
            mask = _draw_mask(pixel_values.shape[0], (height, width), self.mask_patch_size, self.mask_ratio, generator)
            mask = mask.to(device=pixel_values.device, dtype=pixel_values.dtype)
            inputs = pixel_values * (1 - mask)
        reconstruction = self.decoder(spatial_features(self.encoder, inputs))
        loss = None
        if return_loss:
            # in float32: under autocast the decoder's output may be bf16 / fp16
            squared = (reconstruction.float() - pixel_values.float()) ** 2
            weights = torch.ones_like(squared) if mask is None else mask.float().expand_as(squared)
            loss = (squared * weights).sum() / weights.sum()
        return AutoencoderOutput(loss=loss, reconstruction=reconstruction, mask=mask)


def default_mask_patch_size(reduction: int, image_size: int) -> int:
    """The side of a masked square when none is given: the encoder's reduction (a feature cell), at most a quarter
    of the image so that a small image still has 16 patches or more.

    Args:
        reduction: image pixels per feature-map cell (``H // h``).
        image_size: the image side in pixels.

    Returns:
        ``min(reduction, image_size // 4)``, at least 1.
    """
    return max(1, min(reduction, image_size // 4))


def build_image_autoencoder(
    timm_model: nn.Module, input_size: tuple[int, int, int], args: AutoencoderArguments, mask_seed: int | None = None
) -> ImageAutoencoder:
    """Wraps a timm model as the encoder of an :class:`ImageAutoencoder` for images of ``input_size``.

    Args:
        timm_model: the backbone (with or without a classifier: only ``forward_features`` runs).
        input_size: ``(channels, height, width)`` of the training images.
        args: the autoencoder settings. Without ``mask_patch_size`` the default (:func:`default_mask_patch_size`) is
            lowered, where needed, to the largest size that divides both image sides.
        mask_seed: seeds the training masks (``None``: torch's global generator); give each process its own
            (``seed + process_index``), or every process masks the same patches at each step.

    Returns:
        The autoencoder, in the encoder's train / eval mode and on its device.

    Raises:
        WarmstartError: the model gives no spatial feature map, or ``mask_patch_size`` does not divide the image.
    """
    channels, height, width = input_size
    feature_channels, feature_h, feature_w = spatial_feature_shape(timm_model, input_size)
    common = math.gcd(height, width)
    if args.mask_patch_size is not None:
        patch_size = args.mask_patch_size
        if common % patch_size:
            size = f"{height}" if height == width else f"{height}x{width}"
            raise WarmstartError(
                f"--mask_patch_size {patch_size} does not divide the image size {size}: use a divisor of {common}"
            )
    else:
        patch_size = default_mask_patch_size(height // feature_h, min(height, width))
        patch_size = max(d for d in range(1, patch_size + 1) if common % d == 0)
    decoder = ConvDecoder(
        feature_channels,
        (feature_h, feature_w),
        (height, width),
        channels=args.decoder_channels,
        out_channels=channels,
    )
    parameter = next(timm_model.parameters(), None)
    if parameter is not None:
        decoder.to(parameter.device)
    decoder.train(timm_model.training)
    return ImageAutoencoder(
        timm_model, decoder, mask_ratio=args.mask_ratio, mask_patch_size=patch_size, mask_seed=mask_seed
    )
