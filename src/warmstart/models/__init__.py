"""Loading backbones as classifiers sized to a label set: timm models (inside transformers' TimmWrapper, so the
Trainer, pipelines and the Hub see a normal transformers model) and BERT-family sequence classifiers.

Sources: a local hub-format directory (a warmstart output, timm's ``save_for_hf``, or a TimmWrapper
``save_pretrained``), a hub id, or a timm architecture name. Hub ids and pretrained timm weights are downloaded from
the Hub as timm and transformers do, or read from the Hugging Face cache alone with ``HF_HUB_OFFLINE=1``.

- :mod:`~warmstart.models.configs`: a model directory's ``config.json``, checked loading, and the head decisions
  both loaders share;
- :mod:`~warmstart.models.image`: timm backbones and their transformers wrapper;
- :mod:`~warmstart.models.text`: transformers text models and their tokenizers;
- :mod:`~warmstart.models.heads`: a regression head's target scale, folded into its output layer.
"""

from warmstart.models.configs import (
    is_image_model_config,
    keeps_head,
    load_checked,
    newly_initialised,
    read_model_config,
)
from warmstart.models.heads import fold_target_scale, output_layer
from warmstart.models.image import load_image_model, load_timm_backbone, wrap_timm_model
from warmstart.models.text import (
    load_text_config,
    load_text_model,
    load_text_tokenizer,
    loss_is_a_batch_mean,
    max_sequence_length,
    without_load_report,
)

__all__ = [
    "fold_target_scale",
    "is_image_model_config",
    "keeps_head",
    "load_checked",
    "load_image_model",
    "load_text_config",
    "load_text_model",
    "load_text_tokenizer",
    "load_timm_backbone",
    "loss_is_a_batch_mean",
    "max_sequence_length",
    "newly_initialised",
    "output_layer",
    "read_model_config",
    "wrap_timm_model",
    "without_load_report",
]
