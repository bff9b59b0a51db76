"""The sections of the pretraining tasks' configurations that say what the model learns: masked-LM
(:class:`MlmArguments`) and autoencoder (:class:`AutoencoderArguments`) objectives."""

from __future__ import annotations

from dataclasses import dataclass, field

from warmstart.errors import WarmstartError


@dataclass
class MlmArguments:
    mlm_probability: float = field(
        default=0.15, metadata={"help": "Fraction of tokens masked for prediction (BERT: 0.15; 80/10/10 replaced)."}
    )
    packing: bool = field(
        default=True,
        metadata={
            "help": "Concatenate the tokenized texts and cut them into blocks of --max_seq_length (no padding); "
            "false: one text per example, truncated, padded per batch and batched by length."
        },
    )
    pad_to_multiple_of: int | None = field(
        default=None, metadata={"help": "Pad each batch to a multiple of this (8 suits GPU tensor cores)."}
    )

    def __post_init__(self) -> None:
        if not 0.0 < self.mlm_probability < 1.0:
            raise WarmstartError(f"--mlm_probability must be between 0 and 1, got {self.mlm_probability}")
        if self.pad_to_multiple_of is not None and self.pad_to_multiple_of < 1:
            raise WarmstartError(f"--pad_to_multiple_of must be a positive integer, got {self.pad_to_multiple_of}")

    def describe(self) -> str:
        """The objective for the model card and lineage."""
        batches = "texts packed into full blocks" if self.packing else "one text per example, padded per batch"
        return f"masked-LM, {self.mlm_probability:.0%} of tokens masked; {batches}"


@dataclass
class AutoencoderArguments:
    """Command-line settings of autoencoder pretraining (see each field's help)."""

    mask_ratio: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of input patches masked (0: a plain autoencoder; e.g. 0.6: masked image modelling, the "
            "loss on masked pixels only)."
        },
    )
    mask_patch_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of a masked square in pixels; it must divide the image size (default: the encoder's "
            "reduction, at most a quarter of the image)."
        },
    )
    decoder_channels: int = field(
        default=256, metadata={"help": "Width of the decoder's first stage; each later stage halves it, down to 32."}
    )
    num_reconstructions: int = field(
        default=8, metadata={"help": "Validation images shown, with their reconstructions, in reconstructions.png."}
    )

    def __post_init__(self) -> None:
        if not 0.0 <= self.mask_ratio < 1.0:
            raise WarmstartError(f"--mask_ratio must be in [0, 1), got {self.mask_ratio}")
        for name in ("mask_patch_size", "decoder_channels", "num_reconstructions"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise WarmstartError(f"--{name} must be a positive integer, got {value}")

    def describe(self, mask_patch_size: int) -> str:
        """The objective for the model card and lineage (``mask_patch_size``: the one the model uses)."""
        if self.mask_ratio == 0:
            return "autoencoder, MSE reconstruction of the whole image"
        return (
            f"masked autoencoder, {self.mask_ratio:.0%} of {mask_patch_size}x{mask_patch_size}-pixel patches masked "
            "(zeroed in the input), MSE on the masked pixels"
        )
