"""Autoencoder pretraining of a timm backbone on unlabeled images: the encoder is the backbone's ``forward_features``,
a light convolutional decoder rebuilds the pixels, and optional SimMIM-style input masking turns it into masked
image modelling. Only the encoder is kept: :func:`save_image_encoder` writes it as a hub-format model that timm,
transformers and :func:`warmstart.models.load_image_model` load.

Example:
    >>> timm_model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    >>> autoencoder = build_image_autoencoder(timm_model, (3, 64, 64), AutoencoderArguments(mask_ratio=0.5))
    >>> autoencoder(pixel_values).loss  # a Trainer trains it on {"pixel_values": ...} batches

- :mod:`~warmstart.autoencoder.features`: the encoder's feature map, channels first, for CNNs and ViTs alike;
- :mod:`~warmstart.autoencoder.model`: the decoder, the masking, the autoencoder and its builder;
- :mod:`~warmstart.autoencoder.output`: the reconstruction grid and the saved encoder.
"""

from warmstart.autoencoder.features import spatial_feature_shape, spatial_features
from warmstart.autoencoder.model import (
    AutoencoderOutput,
    ConvDecoder,
    ImageAutoencoder,
    build_image_autoencoder,
    default_mask_patch_size,
)
from warmstart.autoencoder.output import save_image_encoder, save_reconstruction_grid

# the settings the builder takes, importable from here as before (not in ``__all__``, as before)
from warmstart.config.objectives import AutoencoderArguments as AutoencoderArguments

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
