"""Autoencoder pretraining: feature-map shapes of CNN / NHWC / ViT encoders and the refusal of models without one,
masking (exact fraction, loss on masked pixels only, fixed masks in evaluation), gradients, a real Trainer's
eval_loss, the reconstruction PNG, and the saved encoder loading in timm, transformers and warmstart.

Models are timm architectures with random weights at 32 - 64 pixels; nothing is downloaded.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import timm
import torch
import transformers
from conftest import ListDataset, without_zero_init_scales
from PIL import Image
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainingArguments

from warmstart.autoencoder import (
    AutoencoderArguments,
    ConvDecoder,
    ImageAutoencoder,
    build_image_autoencoder,
    default_mask_patch_size,
    save_image_encoder,
    save_reconstruction_grid,
    spatial_feature_shape,
    spatial_features,
)
from warmstart.errors import WarmstartError
from warmstart.models import load_image_model

os.environ["HF_HUB_OFFLINE"] = "1"

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _images(batch: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random images (a blurred noise field), normalised: something a small decoder can learn to rebuild."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, size // 8, size // 8, generator=generator)
    unit = nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    return (unit - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def _autoencoder(arch: str = "test_resnet", size: int = 32, **kwargs) -> ImageAutoencoder:
    model_kwargs = kwargs.pop("model_kwargs", {})
    timm_model = timm.create_model(arch, pretrained=False, num_classes=0, **model_kwargs)
    return build_image_autoencoder(timm_model, (3, size, size), AutoencoderArguments(**kwargs))


# ---- arguments -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5])
def test_mask_ratio_outside_range_is_refused(ratio):
    with pytest.raises(WarmstartError, match=rf"--mask_ratio must be in \[0, 1\), got {ratio}"):
        AutoencoderArguments(mask_ratio=ratio)


@pytest.mark.parametrize("name", ["mask_patch_size", "decoder_channels", "num_reconstructions"])
def test_non_positive_sizes_are_refused(name):
    with pytest.raises(WarmstartError, match=f"--{name} must be a positive integer, got 0"):
        AutoencoderArguments(**{name: 0})


def test_arguments_parse_from_the_command_line():
    (args,) = HfArgumentParser(AutoencoderArguments).parse_args_into_dataclasses(
        ["--mask_ratio", "0", "--mask_patch_size", "8", "--decoder_channels", "64"]
    )
    assert (args.mask_ratio, args.mask_patch_size, args.decoder_channels, args.num_reconstructions) == (0, 8, 64, 8)
    assert AutoencoderArguments(mask_ratio=0.99).mask_ratio == 0.99
    with pytest.raises(WarmstartError, match="--mask_ratio"):
        HfArgumentParser(AutoencoderArguments).parse_args_into_dataclasses(["--mask_ratio", "1"])


# ---- feature maps --------------------------------------------------------------------------------------------------


class _ChannelsLastNet(nn.Module):
    """Gives NHWC features with no ``output_fmt`` attribute: found from ``num_features`` in the last dimension."""

    num_features = 12

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, self.num_features, kernel_size=4, stride=4)

    def forward_features(self, x):
        return self.conv(x).permute(0, 2, 3, 1)


@pytest.mark.parametrize(
    ("arch", "kwargs", "size", "expected"),
    [
        ("test_resnet", {}, 64, (96, 2, 2)),  # NCHW, reduction 32
        ("test_efficientnet", {}, 64, (256, 2, 2)),
        ("test_mambaout", {}, 64, (64, 2, 2)),  # NHWC, told by output_fmt
        ("test_vit", {}, 32, (64, 2, 2)),  # class token dropped, dynamic size: 32 / 16
        ("test_vit", {}, 64, (64, 4, 4)),
        ("vit_tiny_patch16_224", {"img_size": 32, "depth": 1}, 32, (192, 2, 2)),  # fixed grid
        ("test_vit", {"reg_tokens": 4, "img_size": 48, "patch_size": 8}, 48, (64, 6, 6)),  # 1 + 4 prefix tokens
    ],
)
def test_spatial_feature_shape(arch, kwargs, size, expected):
    timm_model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    timm_model.train()
    assert spatial_feature_shape(timm_model, (3, size, size)) == expected
    assert timm_model.training  # the dummy forward ran in eval mode, and the mode came back


def test_an_image_size_the_model_does_not_take_is_refused():
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, depth=1)  # fixed 224
    with pytest.raises(WarmstartError, match=r"vit_tiny_patch16_224 cannot encode 32x32 images \(Input height"):
        spatial_feature_shape(timm_model, (3, 32, 32))


def test_channels_last_found_from_num_features():
    assert spatial_feature_shape(_ChannelsLastNet(), (3, 32, 16)) == (12, 8, 4)


def test_vit_tokens_land_on_their_patch_grid():
    timm_model = timm.create_model("test_vit", pretrained=False, num_classes=0, reg_tokens=2).eval()
    pixels = torch.randn(2, 3, 32, 48)
    tokens = timm_model.forward_features(pixels)
    features = spatial_features(timm_model, pixels)
    prefix = timm_model.num_prefix_tokens
    assert prefix == 3 and features.shape == (2, 64, 2, 3)
    for i in range(2):
        for j in range(3):
            torch.testing.assert_close(features[:, :, i, j], tokens[:, prefix + i * 3 + j])


@pytest.mark.parametrize(
    ("arch", "kwargs", "size", "got"),
    [
        # PiT returns its class token only
        ("pit_ti_224", {"img_size": 32}, 32, "shape (1, 1, 256): 1 tokens besides 0 prefix tokens, for a 3x3"),
        # 16 tokens in a 4x4 map, but LeViT keeps no patch grid that tells so (levit_conv_* gives NCHW maps)
        ("levit_128s", {}, 224, "shape (1, 16, 384), tokens with no patch grid"),
        ("crossvit_tiny_240", {}, 240, "a list of (1, 401, 96), (1, 197, 192)"),  # two token streams
    ],
)
def test_models_without_a_spatial_map_are_refused(arch, kwargs, size, got):
    timm_model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs)
    with pytest.raises(WarmstartError) as raised:
        build_image_autoencoder(timm_model, (3, size, size), AutoencoderArguments())
    message = str(raised.value)
    assert message.startswith(f"{arch} gives no spatial feature map from forward_features (got {got}")
    assert message.endswith("pick another --model_name_or_path") and "\n" not in message


# ---- decoder -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("feature", "image", "stages"),
    [
        ((96, 2, 2), (64, 64), 5),
        ((64, 2, 3), (32, 48), 4),
        ((192, 4, 4), (56, 56), 3),  # patch 14: 32 pixels after 3 stages, then resized to 56
        ((16, 8, 8), (8, 8), 0),
    ],
)
def test_decoder_output_size(feature, image, stages):
    channels, h, w = feature
    decoder = ConvDecoder(channels, (h, w), image, channels=64)
    assert sum(isinstance(m, nn.Upsample) for m in decoder.modules()) == stages
    widths = [m.out_channels for m in decoder.modules() if isinstance(m, nn.Conv2d)]
    assert widths == [64, *[max(64 >> (i + 1), 32) for i in range(stages)], 3]
    assert decoder(torch.randn(2, channels, h, w)).shape == (2, 3, *image)


def test_decoder_is_light_next_to_a_resnet18():
    model = _autoencoder("resnet18", size=64)
    encoder_params = sum(p.numel() for p in model.encoder.parameters())
    decoder_params = sum(p.numel() for p in model.decoder.parameters())
    assert decoder_params < 0.1 * encoder_params, (decoder_params, encoder_params)


# ---- mask patch size -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reduction", "image_size", "expected"), [(32, 224, 32), (32, 64, 16), (16, 32, 8), (14, 224, 14), (32, 2, 1)]
)
def test_default_mask_patch_size(reduction, image_size, expected):
    assert default_mask_patch_size(reduction, image_size) == expected


def test_mask_patch_size_chosen_by_the_builder():
    assert _autoencoder("test_resnet", size=64, mask_ratio=0.5).mask_patch_size == 16
    assert _autoencoder("test_vit", size=32, mask_ratio=0.5).mask_patch_size == 8
    # 90 px, features 3x3: the default min(30, 22) = 22 does not divide 90, so the largest divisor below it is used
    assert _autoencoder("test_resnet", size=90, mask_ratio=0.5).mask_patch_size == 18
    assert _autoencoder("test_resnet", size=32, mask_patch_size=4).mask_patch_size == 4


def test_mask_patch_size_must_divide_the_image():
    with pytest.raises(
        WarmstartError, match="--mask_patch_size 5 does not divide the image size 32: use a divisor of 32"
    ):
        _autoencoder("test_resnet", size=32, mask_ratio=0.5, mask_patch_size=5)
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.5, mask_patch_size=8)
    with pytest.raises(WarmstartError, match="--mask_patch_size 8 does not divide the image size 36x36"):
        model(torch.randn(1, 3, 36, 36))


# ---- masking and loss ----------------------------------------------------------------------------------------------


def test_masked_fraction_is_exact_and_the_encoder_sees_zeros():
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.6, mask_patch_size=8)
    seen = []
    model.encoder.conv1.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    pixels = _images(batch=5)
    output = model(pixels)
    mask = output.mask
    assert mask.shape == (5, 1, 32, 32)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    patches = mask[:, 0].unfold(1, 8, 8).unfold(2, 8, 8)  # (B, 4, 4, 8, 8)
    assert torch.equal(patches.amin(dim=(-1, -2)), patches.amax(dim=(-1, -2)))  # whole patches only
    assert patches[..., 0, 0].sum(dim=(1, 2)).tolist() == [round(0.6 * 16)] * 5
    assert len({tuple(m.flatten().tolist()) for m in mask}) > 1  # each image draws its own
    torch.testing.assert_close(seen[0], pixels * (1 - mask))


def test_at_least_one_patch_is_masked():
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.01, mask_patch_size=8)
    assert model(_images(batch=2)).mask.sum().item() == 2 * 64


def test_loss_covers_masked_pixels_only():
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.5, mask_patch_size=8).eval()
    pixels = _images(batch=3)
    with torch.no_grad():
        output = model(pixels)
        squared = (output.reconstruction - pixels) ** 2
        expected = (squared * output.mask).sum() / (output.mask.sum() * 3)
        torch.testing.assert_close(output.loss, expected)
        assert not torch.isclose(output.loss, squared.mean())

        # ruin the reconstruction of every unmasked pixel: eval masks are fixed, so the loss must not move
        decoder = model.decoder
        model.decoder = _Shifted(decoder, 100.0 * (1 - output.mask))
        ruined = model(pixels)
        assert torch.equal(ruined.mask, output.mask)
        torch.testing.assert_close(ruined.loss, output.loss)
        model.decoder = _Shifted(decoder, 100.0 * output.mask)
        assert model(pixels).loss > output.loss + 100


class _Shifted(nn.Module):
    def __init__(self, decoder, shift):
        super().__init__()
        self.decoder, self.shift = decoder, shift

    def forward(self, features):
        return self.decoder(features) + self.shift


def test_plain_autoencoder_loss_is_the_mean_squared_error():
    model = _autoencoder("test_resnet", size=32).eval()
    pixels = _images(batch=2)
    with torch.no_grad():
        output = model(pixels)
    assert output.mask is None and "mask" not in output
    torch.testing.assert_close(output.loss, nn.functional.mse_loss(output.reconstruction, pixels))
    assert list(model(pixels, return_loss=False).keys()) == ["reconstruction"]


def test_eval_masks_are_fixed_and_train_masks_vary():
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.5, mask_patch_size=4)
    pixels = _images(batch=2)
    model.eval()
    with torch.no_grad():
        first = model(pixels).mask
        torch.rand(10)  # the global generator moves on; evaluation must not follow it
        assert torch.equal(model(pixels).mask, first)
        model.train()
        torch.manual_seed(1)
        train_a = model(pixels).mask
        train_b = model(pixels).mask
        torch.manual_seed(1)
        train_again = model(pixels).mask
    assert not torch.equal(train_a, train_b)
    assert torch.equal(train_a, train_again)  # the Trainer's seed makes training reproducible


@pytest.mark.parametrize(
    ("arch", "first", "last"),
    [
        ("test_resnet", "conv1.0.weight", "layer4.0.bn2.weight"),
        ("test_efficientnet", "conv_stem.weight", "bn2.weight"),  # conv_head / bn2 are in forward_features
        ("test_vit", "patch_embed.proj.weight", "norm.weight"),
    ],
)
def test_every_encoder_parameter_gets_a_gradient(arch, first, last):
    timm_model = without_zero_init_scales(timm.create_model(arch, pretrained=False, num_classes=0))
    model = build_image_autoencoder(timm_model, (3, 32, 32), AutoencoderArguments(mask_ratio=0.5))
    model(_images(batch=2)).loss.backward()
    grads = {name: p.grad for name, p in model.encoder.named_parameters()}
    assert first in grads and last in grads
    missing = [name for name, grad in grads.items() if grad is None or not grad.abs().sum() > 0]
    assert not missing
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize(("arch", "mask_ratio"), [("test_resnet", 0.0), ("test_resnet", 0.5), ("test_vit", 0.5)])
def test_a_few_steps_reduce_the_reconstruction_loss(arch, mask_ratio):
    torch.manual_seed(0)
    model = _autoencoder(arch, size=32, mask_ratio=mask_ratio, decoder_channels=64)
    pixels = _images(batch=4)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss_on_the_same_masks():
        # in train mode, as trained: after 20 steps the BatchNorm running statistics still lag behind
        torch.manual_seed(123)
        with torch.no_grad():
            return model(pixels).loss.item()

    before = loss_on_the_same_masks()
    for _ in range(20):
        optimizer.zero_grad()
        model(pixels).loss.backward()
        optimizer.step()
    assert loss_on_the_same_masks() < 0.6 * before


# ---- with the Trainer ----------------------------------------------------------------------------------------------


def test_trainer_reports_eval_loss_without_labels(tmp_path):
    torch.manual_seed(0)
    model = _autoencoder("test_resnet", size=32, mask_ratio=0.5, decoder_channels=32)
    items = [{"pixel_values": image} for image in _images(batch=8)]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        dataloader_num_workers=0,
        prediction_loss_only=True,
        seed=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=ListDataset(items), eval_dataset=ListDataset(items))
    result = trainer.train()
    assert result.global_step == 2 and math.isfinite(result.training_loss)
    metrics = trainer.evaluate()
    assert "eval_loss" in metrics and math.isfinite(metrics["eval_loss"]) and metrics["eval_loss"] > 0
    assert trainer.evaluate()["eval_loss"] == metrics["eval_loss"]  # fixed eval masks: comparable evaluations


# ---- reconstruction grid -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mask_ratio", "rows"), [(0.5, 3), (0.0, 2)])
def test_reconstruction_grid_png(tmp_path, mask_ratio, rows):
    model = _autoencoder("test_resnet", size=32, mask_ratio=mask_ratio, mask_patch_size=8).train()
    pixels = _images(batch=4)
    path = save_reconstruction_grid(model, pixels, MEAN, STD, tmp_path / "grid" / "reconstructions.png")
    assert model.training
    image = Image.open(path)
    assert image.mode == "RGB"
    assert image.size == (4 * (32 + 2) + 2, rows * (32 + 2) + 2)
    array = torch.tensor(list(image.getdata()), dtype=torch.float32).view(image.size[1], image.size[0], 3)
    unit = pixels * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)
    # the first input image starts after the padding, de-normalised
    torch.testing.assert_close(array[2:34, 2:34], (unit[0].permute(1, 2, 0) * 255).round(), atol=1, rtol=0)
    top = 2 + (rows - 1) * 34
    reconstruction = array[top : top + 32, 2 : 4 * 34]
    assert reconstruction.std() > 0
    if rows == 3:
        assert (array[36:68, 2:34] == round(0.5 * 255)).all(dim=-1).any()  # grey masked squares


def test_reconstruction_grid_needs_one_mean_per_channel(tmp_path):
    model = _autoencoder("test_resnet", size=32)
    with pytest.raises(WarmstartError, match="one value per image channel"):
        save_reconstruction_grid(model, _images(batch=1), (0.5,), (0.5,), tmp_path / "grid.png")


# ---- saving the encoder --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "kwargs", "size"),
    [("resnet10t", {}, 32), ("vit_tiny_patch16_224", {"img_size": 32, "depth": 2}, 32)],
)
def test_saved_encoder_round_trips_through_every_loader(tmp_path, arch, kwargs, size):
    timm_model = timm.create_model(arch, pretrained=False, **kwargs)  # with its ImageNet classifier
    model = build_image_autoencoder(timm_model, (3, size, size), AutoencoderArguments(mask_ratio=0.5))
    model(_images(batch=2, size=size)).loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()  # weights other than the initial ones
    data_config = timm.data.resolve_data_config({"input_size": (3, size, size)}, model=timm_model)
    save_image_encoder(model.encoder, tmp_path, data_config)

    assert model.encoder.num_classes == 1000  # the caller's model keeps its head
    saved = {k: v for k, v in model.encoder.state_dict().items() if not k.startswith(("fc.", "head."))}
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["num_classes"] == 0 and "num_classes" not in config.get("model_args", {})
    assert config["model_type"] == "timm_wrapper" and config["pretrained_cfg"]["input_size"] == [3, size, size]

    def assert_same(state, prefix=""):
        assert {k.removeprefix(prefix) for k in state if k.startswith(prefix)} >= set(saved)
        for name, tensor in saved.items():
            assert torch.equal(state[prefix + name], tensor), name

    from_timm = timm.create_model(f"local-dir:{tmp_path}", pretrained=True)
    assert from_timm.num_classes == 0
    assert_same(from_timm.state_dict())
    assert set(from_timm.state_dict()) == set(saved)  # no classifier saved

    from_transformers = transformers.AutoModel.from_pretrained(tmp_path)
    assert type(from_transformers).__name__ == "TimmWrapperModel"
    assert_same(from_transformers.state_dict(), "timm_model.")
    pooled = from_transformers(pixel_values=_images(batch=2, size=size)).pooler_output
    assert pooled.shape == (2, timm_model.num_features)

    classifier = load_image_model(str(tmp_path), labels=["a", "b", "c"])
    assert classifier.config.num_labels == 3 and classifier.timm_model.num_classes == 3
    assert_same(classifier.state_dict(), "timm_model.")
    logits = classifier(pixel_values=_images(batch=2, size=size)).logits
    assert logits.shape == (2, 3)


def test_saving_with_another_image_size_is_refused(tmp_path):
    timm_model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=1)
    data_config = timm.data.resolve_data_config({}, model=timm_model)  # timm's default: 224 pixels
    with pytest.raises(WarmstartError, match="cannot save the model with this data config"):
        save_image_encoder(timm_model, tmp_path, data_config)
