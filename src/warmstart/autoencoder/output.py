"""What an autoencoder run leaves behind: a PNG grid of inputs and their reconstructions, to see what was learned,
and the encoder alone, saved as a hub-format feature extractor that timm, transformers and
:func:`warmstart.models.load_image_model` load.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from warmstart.autoencoder.model import ImageAutoencoder
from warmstart.errors import WarmstartError
from warmstart.export import save_timm_for_hub

# White space between the images of a reconstruction grid, in pixels.
_GRID_PADDING = 2
# Masked patches in the grid's masked-input row are shown in this grey (0..1).
_MASKED_GREY = 0.5


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
