"""Autoencoder pretraining of a timm backbone on unlabeled images: the encoder is the backbone's ``forward_features``,
a light convolutional decoder rebuilds the pixels, and optional SimMIM-style input masking turns it into masked
image modelling. Only the encoder is kept: :func:`save_image_encoder` writes it as a hub-format model that timm,
transformers and :func:`warmstart.models.load_image_model` load.

Example:
    >>> timm_model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    >>> autoencoder = build_image_autoencoder(timm_model, (3, 64, 64), AutoencoderArguments(mask_ratio=0.5))
    >>> autoencoder(pixel_values).loss  # a Trainer trains it on {"pixel_values": ...} batches
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision.utils import make_grid
from transformers.utils import ModelOutput

from warmstart.config.objectives import AutoencoderArguments
from warmstart.errors import WarmstartError
from warmstart.export import contiguous_state, save_timm_for_hub

__all__ = [
    "AutoencoderOutput",
    "ConvDecoder",
    "ImageAutoencoder",
    "build_image_autoencoder",
    "default_mask_patch_size",
    "save_image_encoder",
    "save_reconstruction_grid",
    "spatial_feature_shape",
    "spatial_features",
]

# Width below which the decoder stops halving its channels: thinner stages lose too much to rebuild colour and edges.
_DECODER_MIN_CHANNELS = 32
# Masks drawn in evaluation come from this seed, so that eval losses compare across evaluations and runs.
_EVAL_MASK_SEED = 0
# White space between the images of a reconstruction grid, in pixels.
_GRID_PADDING = 2
# Masked patches in the grid's masked-input row are shown in this grey (0..1).
_MASKED_GREY = 0.5


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


def _architecture(timm_model: nn.Module) -> str:
    cfg = getattr(timm_model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(timm_model).__name__


def _no_spatial_map(timm_model: nn.Module, got: str) -> WarmstartError:
    return WarmstartError(
        f"{_architecture(timm_model)} gives no spatial feature map from forward_features (got {got}): the autoencoder "
        "needs a CNN or a ViT-style model whose features form a grid; pick another --model_name_or_path"
    )


def _token_grid(timm_model: nn.Module, image_hw: tuple[int, int]) -> tuple[int, int] | None:
    """The patch grid a ViT-style model's tokens lie on for an image of ``image_hw``, ``None`` if it has none."""
    patch_embed = getattr(timm_model, "patch_embed", None)
    if patch_embed is None:
        return None
    if hasattr(patch_embed, "dynamic_feat_size"):  # timm's PatchEmbed: right for fixed and dynamic sizes alike
        return tuple(patch_embed.dynamic_feat_size(image_hw))
    grid = getattr(patch_embed, "grid_size", None)
    if grid is not None:
        return tuple(grid)
    patch_size = getattr(patch_embed, "patch_size", None)
    if patch_size is None:
        return None
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    return image_hw[0] // ph, image_hw[1] // pw


def _as_nchw(timm_model: nn.Module, features: Any, image_hw: tuple[int, int]) -> torch.Tensor:
    """``forward_features`` output as a ``(B, C, h, w)`` map.

    Raises:
        WarmstartError: the output is not a feature map or a grid of tokens.
    """
    if not isinstance(features, torch.Tensor):
        got = f"a {type(features).__name__}"
        if isinstance(features, (list, tuple)):
            got += " of " + ", ".join(
                str(tuple(f.shape)) if hasattr(f, "shape") else type(f).__name__ for f in features
            )
        raise _no_spatial_map(timm_model, got)
    shape = f"shape {tuple(features.shape)}"
    if features.ndim == 4:
        fmt = getattr(timm_model, "output_fmt", None)
        fmt = str(getattr(fmt, "value", fmt) or "").upper()  # timm keeps it as a str or a Format enum
        num_features = getattr(timm_model, "num_features", None)
        channels_last = fmt == "NHWC" or (
            not fmt and features.shape[1] != num_features and features.shape[-1] == num_features
        )
        return features.permute(0, 3, 1, 2) if channels_last else features
    if features.ndim == 3:
        grid = _token_grid(timm_model, image_hw)
        prefix = getattr(timm_model, "num_prefix_tokens", None) or 0  # class, distillation and register tokens
        tokens = features[:, prefix:]
        if grid is None:
            raise _no_spatial_map(timm_model, f"{shape}, tokens with no patch grid to lay them on")
        if tokens.shape[1] != grid[0] * grid[1]:
            raise _no_spatial_map(
                timm_model,
                f"{shape}: {tokens.shape[1]} tokens besides {prefix} prefix tokens, for a {grid[0]}x{grid[1]} patch "
                "grid",
            )
        return tokens.transpose(1, 2).reshape(features.shape[0], features.shape[2], *grid)
    raise _no_spatial_map(timm_model, shape)


def spatial_features(timm_model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The encoder's final feature map for a batch, channels first.

    ``forward_features`` is used because it is everything the backbone computes before pooling (EfficientNet's
    ``conv_head``, a ViT's final norm), so every one of those parameters trains.

    Args:
        timm_model: a timm model.
        pixel_values: images, ``(B, C, H, W)``.

    Returns:
        ``(B, C, h, w)``: a CNN's map as is (NHWC models such as Swin permuted), a ViT's patch tokens without the
        prefix tokens, laid out on the patch grid.

    Raises:
        WarmstartError: the model's features form no spatial grid.
    """
    features = timm_model.forward_features(pixel_values)
    return _as_nchw(timm_model, features, tuple(pixel_values.shape[-2:]))


def spatial_feature_shape(timm_model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
    """The ``(channels, h, w)`` of the encoder's feature map for one image of ``input_size``.

    Found by one forward pass of a blank image, in eval mode without gradients; the model's mode is restored.

    Args:
        timm_model: a timm model.
        input_size: ``(channels, height, width)`` of the images.

    Returns:
        ``(C, h, w)``.

    Raises:
        WarmstartError: the model's features form no spatial grid (pooled vectors, several token streams, ...), or
            the model does not take images of ``input_size``.
    """
    parameter = next(timm_model.parameters(), None)
    device, dtype = (parameter.device, parameter.dtype) if parameter is not None else ("cpu", torch.float32)
    was_training = timm_model.training
    timm_model.eval()
    try:
        with torch.no_grad():
            blank = torch.zeros(1, *input_size, device=device, dtype=dtype)
            try:
                features = timm_model.forward_features(blank)
            # timm checks fixed input sizes with asserts ("Input height (32) doesn't match model (224).")
            except (AssertionError, RuntimeError, ValueError) as err:
                reason = " ".join(str(err).split())[:200] or type(err).__name__
                raise WarmstartError(
                    f"{_architecture(timm_model)} cannot encode {input_size[1]}x{input_size[2]} images ({reason}): "
                    "build the model for that size (timm's img_size) or change --image_size"
                ) from None
            features = _as_nchw(timm_model, features, tuple(input_size[1:]))
    finally:
        timm_model.train(was_training)
    return tuple(features.shape[1:])


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


def save_reconstruction_grid(
    model: ImageAutoencoder,
    pixel_values: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    path: str | Path,
) -> Path:
    """Writes one PNG of a batch and its reconstructions, to see what the autoencoder learned.

    Rows, each of ``len(pixel_values)`` images: the inputs, the masked inputs (only with masking; masked squares
    grey), the reconstructions. Images are separated by 2 pixels, so the PNG is ``B * (W + 2) + 2`` pixels wide and
    ``rows * (H + 2) + 2`` high. The model runs in eval mode (fixed masks) without gradients; its mode is restored.

    Args:
        model: the autoencoder.
        pixel_values: ``(B, C, H, W)`` normalised images.
        mean: the per-channel mean the images were normalised with.
        std: the per-channel standard deviation.
        path: the PNG file to write.

    Returns:
        ``path``.

    Raises:
        WarmstartError: ``mean`` / ``std`` do not have one value per image channel.
    """
    channels = pixel_values.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise WarmstartError(
            f"mean and std need one value per image channel ({channels}), got {len(mean)} and {len(std)}: pass the "
            "model's data config"
        )
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else pixel_values.device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(pixel_values.to(device), return_loss=False)
    finally:
        model.train(was_training)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)

    def to_unit(images: torch.Tensor) -> torch.Tensor:
        return (images.detach().float().cpu() * std_t + mean_t).clamp(0.0, 1.0)

    inputs = to_unit(pixel_values)
    rows = [inputs]
    if output.mask is not None:
        mask = output.mask.float().cpu()
        rows.append(inputs * (1 - mask) + _MASKED_GREY * mask)
    rows.append(to_unit(output.reconstruction))
    grid = make_grid(torch.cat(rows), nrow=len(pixel_values), padding=_GRID_PADDING, pad_value=1.0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(path)
    return path


def save_image_encoder(timm_model: nn.Module, output_dir: str | Path, data_config: dict[str, Any]) -> None:
    """Saves the encoder alone (no classifier) as a hub-format feature extractor that timm and transformers load.

    The directory loads with ``timm.create_model("local-dir:<dir>", pretrained=True)`` (``num_classes`` 0),
    ``transformers.AutoModel.from_pretrained(<dir>)`` (a ``TimmWrapperModel``) and
    :func:`warmstart.models.load_image_model` (which adds a new head for the labels it is given).

    ``config.json`` is timm's ``save_config_for_hf`` layout plus ``model_type: timm_wrapper``, with ``num_classes``
    only at the top level: timm also records ``num_classes`` in ``model_args``, which ``TimmWrapperModel`` passes
    to ``timm.create_model`` next to its own ``num_classes=0`` ("multiple values for keyword argument"). A
    ``TimmWrapperForImageClassification`` cannot hold a model without a head, so ``export.save_image_model`` (which
    takes one) is not used: :func:`warmstart.export.save_timm_for_hub` writes it as a ``TimmWrapperModel``.

    Args:
        timm_model: the encoder; it is copied, not changed.
        output_dir: the directory (made if missing).
        data_config: the preprocessing the encoder was trained with (timm's ``resolve_data_config`` output, with the
            training image size).

    Raises:
        WarmstartError: ``data_config`` does not fit the model (a fixed-size ViT given another image size).
    """
    encoder = copy.deepcopy(timm_model)
    encoder.reset_classifier(0)
    cfg = {k: v for k, v in encoder.pretrained_cfg.items() if k not in ("label_names", "label_descriptions")}
    encoder.pretrained_cfg = dict(cfg, num_classes=0)
    save_timm_for_hub(encoder, output_dir, data_config, architectures=["TimmWrapperModel"])
