"""The frozen-backbone fast path: compute the backbone's features once per split, then train only the head on them.

With ``head_only`` the backbone computes the same function every epoch, so re-running it is pure waste (measured
here: 19x to 82x over ten epochs). :func:`cache_features` runs it once per split, in eval and inference mode, in
length-sorted batches for text, and returns a :class:`CachedRun`: the splits as feature tables and a *head model*
that the HF Trainer trains in place of the full model, so logging, schedulers, early stopping, checkpoints and
``accelerate launch`` work as usual. The head model shares the head's parameters with the full model: after
training, the full model (backbone + trained head) is saved as always.

The cut sits at the input of the trainable head, where every model in warmstart's tables computes
``head(features(x))``:

- timm (wrapped in transformers' ``TimmWrapperForImageClassification``): ``forward_head(forward_features(x),
  pre_logits=True)``, the pooled features; the head is timm's dropout (``drop_rate``) and the classifier.
- BERT-family ``...ForSequenceClassification``: the base model's first-token (or, for ModernBERT's mean pooling,
  masked-mean) hidden state and its pooler output where it has one; the head is the model class's own code after
  the base model (dropout, pooler / dense layers, classifier, loss), run by the model's own ``forward`` with the
  base model replaced by a pass-through of the cached features.

Before any training, one batch checks that the head on cached features reproduces the full model's logits; where
it does not (an architecture whose head reads more than the cut keeps), the run trains without the cache and says
why.
"""

from warmstart.feature_cache.caching import CachedRun, CacheSettings, cache_features
from warmstart.feature_cache.heads import CacheDeclined, backbone_features, head_inputs, head_model
from warmstart.feature_cache.storage import CACHE_DIR_NAME, FeatureTable, default_cache_dir
from warmstart.feature_cache.wrappers import FEATURES_KEY, CachedFeatureCollator, ProbeThenFull, WithCachedFeatures

__all__ = [
    "CACHE_DIR_NAME",
    "CacheDeclined",
    "CacheSettings",
    "CachedFeatureCollator",
    "CachedRun",
    "FEATURES_KEY",
    "FeatureTable",
    "ProbeThenFull",
    "WithCachedFeatures",
    "backbone_features",
    "cache_features",
    "default_cache_dir",
    "head_inputs",
    "head_model",
]
