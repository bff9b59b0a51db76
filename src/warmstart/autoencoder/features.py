"""The encoder's side of the autoencoder: a timm backbone's ``forward_features`` output as a channels-first spatial
map, whatever layout the model gives (a CNN's NCHW or NHWC map, a ViT's patch tokens laid out on the patch grid), and
the map's shape for a given image size; a model whose features form no grid is refused with a one-line error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from warmstart.errors import WarmstartError


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
