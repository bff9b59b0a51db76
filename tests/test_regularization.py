"""Regularization: class weights, the loss (hard / soft labels, smoothing, weights, gradient accumulation), mixup /
cutmix batches, early stopping settings, auto-augment and random erasing, and the options refused up front.

Models are timm's tiny test architectures with random weights at 32 pixels; nothing is downloaded.
"""

from __future__ import annotations

import copy
import random
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import COLORS, ListDataset
from PIL import Image
from transformers import EarlyStoppingCallback, Trainer, TrainingArguments
from transformers.modeling_outputs import ImageClassifierOutput
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from warmstart.config import RegularizationArguments
from warmstart.data import (
    attach_image_transforms,
    encode_labels,
    image_collate,
    image_transforms,
    load_raw_splits,
    resolve_image_column,
)
from warmstart.errors import WarmstartError
from warmstart.metrics import compute_metrics
from warmstart.models import load_image_model
from warmstart.regularization import (
    TRAIN_MARKER,
    MixupCollator,
    check_regularization,
    class_weights_from_labels,
    early_stopping_settings,
    make_loss_function,
    needs_loss_function,
    prepare_regularization,
)

LABELS = list(COLORS)  # red, green, blue
C = len(LABELS)


def _logits_and_labels(batch: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, C, generator=generator) * 2
    labels = torch.tensor([i % C for i in range(batch)])
    return logits, labels


# ---- class weights -------------------------------------------------------------------------------------------------


def test_class_weights_are_sklearns_balanced_weights():
    labels = [0, 0, 0, 1, 2, 2]  # counts 3, 1, 2 of 6
    weights = class_weights_from_labels(labels, 3)
    expected = torch.tensor([6 / (3 * 3), 6 / (3 * 1), 6 / (3 * 2)])
    assert weights.dtype == torch.float32
    torch.testing.assert_close(weights, expected)
    # their average over the training samples is 1 (over the classes, weighted by frequency)
    assert weights[torch.tensor(labels)].mean().item() == pytest.approx(1.0)
    from sklearn.utils.class_weight import compute_class_weight

    sklearn = compute_class_weight("balanced", classes=np.arange(3), y=np.array(labels))
    np.testing.assert_allclose(weights.numpy(), sklearn, rtol=1e-6)


def test_class_weights_of_a_tensor_and_of_balanced_data():
    torch.testing.assert_close(class_weights_from_labels(torch.tensor([2, 1, 0, 1, 0, 2]), 3), torch.ones(3))


def test_a_class_absent_from_train_has_no_weight():
    with pytest.raises(WarmstartError, match=r"class 'green' has no training example.*--class_weights none"):
        class_weights_from_labels([0, 0, 2], 3, names=LABELS)
    with pytest.raises(WarmstartError, match="class 1 has no training example"):
        class_weights_from_labels([0, 0, 2], 3)
    with pytest.raises(WarmstartError, match="outside the 3 classes"):
        class_weights_from_labels([0, 3], 3)
    with pytest.raises(WarmstartError, match="empty"):
        class_weights_from_labels([], 3)


# ---- the loss ------------------------------------------------------------------------------------------------------


def test_hard_labels_give_torch_cross_entropy():
    logits, labels = _logits_and_labels()
    loss = make_loss_function(C)
    expected = F.cross_entropy(logits, labels)
    torch.testing.assert_close(loss(logits, labels), expected)
    # the forms the Trainer hands over: a ModelOutput, and a tuple when return_dict is off
    torch.testing.assert_close(loss(ImageClassifierOutput(logits=logits), labels), expected)
    torch.testing.assert_close(loss((logits,), labels), expected)


def test_label_smoothing_gives_torch_cross_entropy_with_label_smoothing():
    logits, labels = _logits_and_labels()
    loss = make_loss_function(C, label_smoothing=0.2)
    torch.testing.assert_close(loss(logits, labels), F.cross_entropy(logits, labels, label_smoothing=0.2))
    assert not torch.allclose(loss(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_one_hot_soft_labels_equal_hard_labels(smoothing, weighted):
    logits, labels = _logits_and_labels(7)
    weights = torch.tensor([0.5, 2.0, 1.25]) if weighted else None
    loss = make_loss_function(C, label_smoothing=smoothing, class_weights=weights)
    soft = F.one_hot(labels, C).float()
    torch.testing.assert_close(loss(logits, soft), loss(logits, labels))


def test_class_weights_match_torch_weighted_cross_entropy_summed_over_the_samples():
    logits, labels = _logits_and_labels(8)
    weights = torch.tensor([0.5, 2.0, 1.25])
    ours = make_loss_function(C, class_weights=weights)(logits, labels)
    # a mean over the samples (sum of w_i * l_i / N), not torch's weighted mean (divided by the sum of the w_i)
    torch.testing.assert_close(ours, F.cross_entropy(logits, labels, weight=weights, reduction="sum") / len(labels))
    torch_mean = F.cross_entropy(logits, labels, weight=weights)
    torch.testing.assert_close(ours * len(labels) / weights[labels].sum(), torch_mean)
    assert not torch.allclose(ours, torch_mean)


def test_class_weights_with_smoothing_weight_the_whole_sample_loss():
    logits, labels = _logits_and_labels(6)
    weights = torch.tensor([0.5, 2.0, 1.25])
    ours = make_loss_function(C, label_smoothing=0.1, class_weights=weights)(logits, labels)
    per_sample = F.cross_entropy(logits, labels, label_smoothing=0.1, reduction="none")
    torch.testing.assert_close(ours, (weights[labels] * per_sample).mean())


def test_soft_labels_weight_each_sample_by_its_classes():
    logits, _ = _logits_and_labels(4)
    soft = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.4, 0.6], [1.0, 0.0, 0.0], [0.2, 0.2, 0.6]])
    weights = torch.tensor([0.5, 2.0, 1.25])
    log_probs = torch.log_softmax(logits, dim=-1)
    sample_weight = soft @ weights  # e.g. row 0: 0.7 * 0.5 + 0.3 * 2.0
    torch.testing.assert_close(sample_weight[0], torch.tensor(0.95))
    smoothed = soft * 0.9 + 0.1 / C
    expected = (sample_weight * -(smoothed * log_probs).sum(-1)).mean()
    torch.testing.assert_close(make_loss_function(C, 0.1, weights)(logits, soft), expected)
    # without weights or smoothing, torch's cross_entropy takes probabilities as targets too
    torch.testing.assert_close(make_loss_function(C)(logits, soft), F.cross_entropy(logits, soft))


def test_ignored_labels_are_skipped_as_in_torch():
    logits, labels = _logits_and_labels(6)
    labels[[1, 4]] = -100
    torch.testing.assert_close(make_loss_function(C)(logits, labels), F.cross_entropy(logits, labels))


def test_num_items_in_batch_divides_the_summed_loss():
    logits, labels = _logits_and_labels(4)
    summed = F.cross_entropy(logits, labels, reduction="sum")
    loss = make_loss_function(C)
    torch.testing.assert_close(loss(logits, labels, num_items_in_batch=torch.tensor(10)), summed / 10)
    # the Trainer counts the B * C entries of a soft label tensor: 10 samples are 30 entries
    soft = F.one_hot(labels, C).float()
    torch.testing.assert_close(loss(logits, soft, num_items_in_batch=torch.tensor(10 * C)), summed / 10)


def test_bad_loss_settings_are_refused():
    with pytest.raises(WarmstartError, match="at least 2 classes"):
        make_loss_function(1)
    with pytest.raises(WarmstartError, match="label_smoothing"):
        make_loss_function(C, label_smoothing=1.0)
    with pytest.raises(WarmstartError, match="2 class weights for a head of 3"):
        make_loss_function(C, class_weights=torch.ones(2))
    with pytest.raises(WarmstartError, match="not negative"):
        make_loss_function(C, class_weights=torch.tensor([1.0, -1.0, 1.0]))


# ---- gradient accumulation through the Trainer ---------------------------------------------------------------------


def _stack(examples):
    labels = [e["labels"] for e in examples]
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels),
    }


def _items(n: int, soft: bool) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    items = []
    for i in range(n):
        pixels = torch.randn(3, 32, 32, generator=generator)
        if soft:
            lam = 0.3 + 0.1 * i
            label = (
                lam * F.one_hot(torch.tensor(i % C), C).float()
                + (1 - lam) * F.one_hot(torch.tensor((i + 1) % C), C).float()
            )
        else:
            label = i % C
        items.append({"pixel_values": pixels, "labels": label})
    return items


def _one_sgd_step(model, items, loss_function, tmp_path, batch_size, accumulation):
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        optim="sgd",  # an update proportional to the gradient (Adam's first step would hide a scale error)
        learning_rate=0.5,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,  # no clipping, which would hide a scale error too
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=ListDataset(items), data_collator=_stack, compute_loss_func=loss_function
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def _naive_mean_loss(outputs, labels, num_items_in_batch=None):
    return F.cross_entropy(outputs.logits, labels)  # ignores num_items_in_batch: each micro-batch's own mean


@pytest.mark.parametrize("soft", [False, True], ids=["hard", "soft"])
def test_gradient_accumulation_equals_one_big_batch(soft, tmp_path):
    # test_convnext has LayerNorm only: BatchNorm statistics would differ between 2 small batches and 1 big one
    base = load_image_model("test_convnext", LABELS, random_init=True)
    initial = {name: p.detach().clone() for name, p in base.named_parameters()}
    items = _items(6, soft)  # micro-batches of 4 and 2: the last accumulation step is smaller
    loss = make_loss_function(C, label_smoothing=0.1, class_weights=torch.tensor([0.5, 2.0, 1.25]))

    big = _one_sgd_step(copy.deepcopy(base), items, loss, tmp_path / "big", batch_size=6, accumulation=1)
    accumulated = _one_sgd_step(copy.deepcopy(base), items, loss, tmp_path / "acc", batch_size=4, accumulation=2)

    # the reference: one SGD step on the mean loss of all 6 samples, by hand (checks the scale, not only agreement)
    reference = copy.deepcopy(base)
    batch = _stack(items)
    loss(reference(pixel_values=batch["pixel_values"]), batch["labels"]).backward()
    expected = {name: (p - 0.5 * p.grad).detach() for name, p in reference.named_parameters()}

    assert any(not torch.allclose(big[name], initial[name]) for name in big), "the step changed nothing"
    for name in big:
        torch.testing.assert_close(big[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(accumulated[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)

    if not soft:  # the control: a per-micro-batch mean is not the big batch's gradient
        big = _one_sgd_step(copy.deepcopy(base), items, _naive_mean_loss, tmp_path / "n1", 6, 1)
        accumulated = _one_sgd_step(copy.deepcopy(base), items, _naive_mean_loss, tmp_path / "n2", 4, 2)
        assert any(not torch.allclose(accumulated[n], big[n], rtol=1e-5, atol=1e-6) for n in big)


# ---- mixup / cutmix ------------------------------------------------------------------------------------------------


def _examples(labels: list[int], marked: bool) -> list[dict]:
    """Images with these labels; in the test batches each example's mixing partner (the batch reversed) is of
    another class."""
    generator = torch.Generator().manual_seed(2)
    examples = []
    for label in labels:
        example = {"pixel_values": torch.rand(3, 16, 16, generator=generator), "labels": label}
        if marked:
            example[TRAIN_MARKER] = True
        examples.append(example)
    return examples


def test_mixup_collator_mixes_training_batches():
    np.random.seed(0)
    examples = _examples([0, 1, 2, 0, 2, 1], marked=True)
    batch = MixupCollator(C, mixup_alpha=1.0)(examples)
    plain = image_collate(examples)
    assert set(batch) == {"pixel_values", "labels"}  # the marker does not reach the model
    labels = batch["labels"]
    assert labels.shape == (6, C) and labels.dtype == torch.float32
    torch.testing.assert_close(labels.sum(dim=1), torch.ones(6))
    assert (labels.max(dim=1).values < 1).all()  # mixed: no row is one class alone
    assert batch["pixel_values"].shape == plain["pixel_values"].shape
    assert not torch.allclose(batch["pixel_values"], plain["pixel_values"])
    # batch mode: image i is lam * x_i + (1 - lam) * x_(B-1-i), and so is its label
    lam = labels[0, 0].item()  # example 0 is class 0, its partner (example 5) class 1
    torch.testing.assert_close(labels[0], torch.tensor([lam, 1 - lam, 0.0]))
    mixed = lam * plain["pixel_values"][0] + (1 - lam) * plain["pixel_values"][5]
    torch.testing.assert_close(batch["pixel_values"][0], mixed, rtol=1e-5, atol=1e-5)


def test_cutmix_collator_pastes_a_box():
    np.random.seed(0)  # a box of 28% of the image (with some seeds it is empty: lambda 1, nothing pasted)
    examples = _examples([0, 1, 2, 1], marked=True)
    plain = image_collate(examples)
    batch = MixupCollator(C, cutmix_alpha=1.0)(examples)
    changed = (batch["pixel_values"] != plain["pixel_values"]).any(dim=1)  # [B, H, W] pixels from the partner
    assert changed.any()
    # the label weight of the partner is the pasted area (timm corrects lambda to the box actually pasted)
    area = changed[0].float().mean().item()
    partner_class = plain["labels"][3].item()
    assert batch["labels"][0, partner_class].item() == pytest.approx(area, abs=1e-6)
    torch.testing.assert_close(batch["labels"].sum(dim=1), torch.ones(4))


def test_mixup_collator_leaves_evaluation_batches_alone():
    examples = _examples([0, 1, 2, 0, 2, 1], marked=False)
    batch = MixupCollator(C, mixup_alpha=1.0, cutmix_alpha=1.0)(examples)
    plain = image_collate(examples)
    assert batch["labels"].dtype == torch.long
    assert torch.equal(batch["labels"], plain["labels"])
    assert torch.equal(batch["pixel_values"], plain["pixel_values"])


def test_an_odd_training_batch_is_mixed_but_its_last_example():
    np.random.seed(0)
    examples = _examples([0, 1, 2, 2, 1], marked=True)
    plain = image_collate(examples)
    batch = MixupCollator(C, mixup_alpha=1.0)(examples)
    labels = batch["labels"]
    assert labels.shape == (5, C) and labels.dtype == torch.float32  # soft, as every training batch
    torch.testing.assert_close(labels[4], F.one_hot(plain["labels"][4], C).float())
    assert torch.equal(batch["pixel_values"][4], plain["pixel_values"][4])
    assert (labels[:4].max(dim=1).values < 1).all()
    one = MixupCollator(C, mixup_alpha=1.0)(_examples([0], marked=True))
    torch.testing.assert_close(one["labels"], F.one_hot(torch.tensor([0]), C).float())


def test_mixup_collator_needs_an_alpha():
    with pytest.raises(WarmstartError, match="mixup_alpha or --cutmix_alpha"):
        MixupCollator(C)


def _image_splits(image_dirs):
    splits = load_raw_splits(data_dirs={k: str(v) for k, v in image_dirs.items()})
    labels = encode_labels(splits, "label")
    return splits, labels, resolve_image_column(splits, None)


def test_attach_image_transforms_marks_train_examples_only(image_dirs):
    splits, labels, column = _image_splits(image_dirs)
    model = load_image_model("test_resnet", labels, random_init=True)
    _, train, evaluation = image_transforms(model, 32)
    unmarked = attach_image_transforms(copy.copy(splits), column, train, evaluation)
    assert set(unmarked["train"][0]) == {"pixel_values", "labels"}
    marked = attach_image_transforms(splits, column, train, evaluation, mark_train=True)
    assert marked["train"][0][TRAIN_MARKER] is True
    assert [e[TRAIN_MARKER] for e in marked["train"].select(range(3))] == [True] * 3
    assert TRAIN_MARKER not in marked["validation"][0]


def test_trainer_run_with_mixup_uses_soft_labels_and_keeps_the_problem_type(image_dirs, tmp_path):
    splits, labels, column = _image_splits(image_dirs)
    model = load_image_model("test_resnet", labels, random_init=True)
    _, train, evaluation = image_transforms(model, 32)
    splits = attach_image_transforms(splits, column, train, evaluation, mark_train=True)
    loss = make_loss_function(len(labels), label_smoothing=0.1)
    seen = []

    def recording_loss(outputs, labels, num_items_in_batch=None):
        seen.append((model.training, labels.dtype, tuple(labels.shape)))
        return loss(outputs, labels, num_items_in_batch)

    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=1e-3,
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
    )
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        data_collator=MixupCollator(len(labels), mixup_alpha=0.4, cutmix_alpha=1.0),
        compute_loss_func=recording_loss,
        compute_metrics=compute_metrics,
    )
    result = trainer.train()
    metrics = trainer.evaluate()
    assert np.isfinite(result.training_loss)
    assert np.isfinite(metrics["eval_loss"]) and 0.0 <= metrics["eval_accuracy"] <= 1.0
    train_calls = [s for s in seen if s[0]]
    eval_calls = [s for s in seen if not s[0]]
    assert len(train_calls) == 3 and all(s[1] == torch.float32 and s[2] == (8, C) for s in train_calls)
    assert eval_calls and all(s[1] == torch.long and len(s[2]) == 1 for s in eval_calls)
    assert model.config.problem_type == "single_label_classification"


# ---- early stopping ------------------------------------------------------------------------------------------------


def _args(tmp_path, **kwargs) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kwargs)


def test_early_stopping_defaults_to_evaluating_and_saving_every_epoch(tmp_path):
    args = _args(tmp_path)  # eval_strategy no, save_strategy steps: TrainingArguments' defaults
    callback = early_stopping_settings(args, 2)
    assert isinstance(callback, EarlyStoppingCallback) and callback.early_stopping_patience == 2
    assert args.eval_strategy == IntervalStrategy.EPOCH and args.save_strategy == SaveStrategy.EPOCH
    assert args.load_best_model_at_end and args.metric_for_best_model == "accuracy" and args.greater_is_better
    assert args.do_eval


def test_early_stopping_saves_at_the_evaluation_steps(tmp_path):
    args = _args(tmp_path, eval_strategy="steps", eval_steps=7, save_strategy="epoch", metric_for_best_model="loss")
    early_stopping_settings(args, 1)
    assert args.save_strategy == SaveStrategy.STEPS and args.save_steps == 7
    assert args.metric_for_best_model == "loss" and args.greater_is_better is False
    best = _args(tmp_path, eval_strategy="epoch", save_strategy="best", metric_for_best_model="eval_f1_macro")
    early_stopping_settings(best, 1)
    assert best.save_strategy == SaveStrategy.BEST and best.greater_is_better


def test_impossible_early_stopping_settings(tmp_path):
    with pytest.raises(WarmstartError, match="--save_strategy is no"):
        early_stopping_settings(_args(tmp_path, save_strategy="no"), 2)
    with pytest.raises(WarmstartError, match="'precision' is not a metric"):
        early_stopping_settings(_args(tmp_path, metric_for_best_model="precision"), 2)
    with pytest.raises(WarmstartError, match="would keep the worst model"):
        early_stopping_settings(_args(tmp_path, greater_is_better=False), 2)
    with pytest.raises(WarmstartError, match="at least 1"):
        early_stopping_settings(_args(tmp_path), 0)


def test_early_stopping_stops_a_trainer_run(tmp_path):
    model = load_image_model("test_convnext", LABELS, random_init=True)
    args = _args(
        tmp_path,
        num_train_epochs=6,
        per_device_train_batch_size=6,
        learning_rate=0.0,  # nothing improves: training stops after 1 + patience evaluations
        remove_unused_columns=False,
        dataloader_num_workers=0,
        disable_tqdm=True,
        save_total_limit=1,
    )
    callback = early_stopping_settings(args, 1)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=ListDataset(_items(6, soft=False)),
        eval_dataset=ListDataset(_items(6, soft=False)),
        data_collator=_stack,
        compute_metrics=compute_metrics,
        callbacks=[callback],
    )
    trainer.train()
    assert trainer.state.epoch == pytest.approx(2.0)
    assert trainer.state.best_model_checkpoint is not None


# ---- auto-augment and random erasing -------------------------------------------------------------------------------


def _noise_image(size: int = 40) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def _seeded(transform, image, seed: int = 0) -> torch.Tensor:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


@pytest.fixture(scope="module")
def resnet():
    return load_image_model("test_resnet", LABELS, random_init=True)


def test_auto_augment_is_in_the_training_transform(resnet):
    _, plain, evaluation = image_transforms(resnet, 32)
    _, augmented, evaluation_aa = image_transforms(resnet, 32, auto_augment="rand-m9-mstd0.5")
    assert "RandAugment" in str(augmented) and "RandAugment" not in str(plain)
    assert str(evaluation_aa) == str(evaluation)  # evaluation is never augmented
    image = _noise_image()
    out = _seeded(augmented, image)
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    assert not torch.equal(out, _seeded(plain, image))
    _, off, _ = image_transforms(resnet, 32, auto_augment="none")
    assert str(off) == str(plain)


def test_random_erasing_erases_a_box(resnet):
    _, plain, _ = image_transforms(resnet, 32)
    _, erasing, _ = image_transforms(resnet, 32, random_erasing=1.0)
    assert "RandomErasing" in str(erasing) and "RandomErasing" not in str(plain)
    image = _noise_image()
    before, after = _seeded(plain, image), _seeded(erasing, image)
    assert after.shape == (3, 32, 32)
    erased = before != after
    assert erased.any()
    assert (after[erased] == 0).all()  # timm's constant fill: 0 after normalization


@pytest.mark.parametrize("policy", ["bogus", "v1", "rand-x9", "augmix-x3"])
def test_an_unknown_auto_augment_policy_is_one_line(resnet, policy):
    with pytest.raises(WarmstartError, match=rf"--auto_augment '{policy}' is not a timm auto-augment policy") as err:
        image_transforms(resnet, 32, auto_augment=policy)
    assert "\n" not in str(err.value)


# ---- options refused up front --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "option",
    [{"mixup_alpha": 0.2}, {"cutmix_alpha": 1.0}, {"auto_augment": "rand-m9-mstd0.5"}, {"random_erasing": 0.25}],
)
def test_image_augmentation_is_refused_for_text(option):
    reg = RegularizationArguments(**option)
    with pytest.raises(WarmstartError, match=rf"--{next(iter(option))} applies to images only"):
        check_regularization(reg, "text", "single_label_classification")
    check_regularization(reg, "image", "single_label_classification")


def test_text_accepts_the_loss_options():
    reg = RegularizationArguments(label_smoothing=0.1, class_weights="auto", early_stopping_patience=2)
    check_regularization(reg, "text", "single_label_classification")
    check_regularization(RegularizationArguments(auto_augment="none"), "text", "single_label_classification")
    with pytest.raises(WarmstartError, match="--mixup_alpha, --random_erasing apply to images only"):
        check_regularization(RegularizationArguments(mixup_alpha=0.2, random_erasing=0.1), "text", None)


def test_class_weights_are_refused_for_regression():
    with pytest.raises(WarmstartError, match="--class_weights auto .* regression head"):
        check_regularization(RegularizationArguments(class_weights="auto"), "text", "regression")
    with pytest.raises(WarmstartError, match="--label_smoothing .* regression head"):
        check_regularization(RegularizationArguments(label_smoothing=0.1), "text", "regression")
    check_regularization(RegularizationArguments(early_stopping_patience=3), "text", "regression")


def test_options_checked_against_the_training_arguments(tmp_path):
    with pytest.raises(WarmstartError, match="set --label_smoothing instead"):
        check_regularization(
            RegularizationArguments(class_weights="auto"),
            "image",
            "single_label_classification",
            _args(tmp_path, label_smoothing_factor=0.1),
        )
    # the Trainer's own smoothing alone is fine: no warmstart loss then
    check_regularization(
        RegularizationArguments(), "image", "single_label_classification", _args(tmp_path, label_smoothing_factor=0.1)
    )
    with pytest.raises(WarmstartError, match="per_device_train_batch_size must be 2"):
        check_regularization(
            RegularizationArguments(mixup_alpha=0.2),
            "image",
            "single_label_classification",
            _args(tmp_path, per_device_train_batch_size=1),
        )


def test_needs_loss_function():
    assert not needs_loss_function(RegularizationArguments(auto_augment="rand-m9", early_stopping_patience=2))
    assert needs_loss_function(RegularizationArguments(label_smoothing=0.1))
    assert needs_loss_function(RegularizationArguments(class_weights="auto"))
    assert needs_loss_function(RegularizationArguments(cutmix_alpha=1.0))


# ---- prepare_regularization: what a recipe calls -------------------------------------------------------------------


def _config(problem_type="single_label_classification"):
    return SimpleNamespace(num_labels=C, problem_type=problem_type, id2label=dict(enumerate(LABELS)))


def _train_split_that_must_not_decode(labels):
    data = datasets.Dataset.from_dict({"image": [f"{i}.png" for i in range(len(labels))], "labels": labels})

    def decode(batch):
        raise AssertionError("an image was decoded to read the labels")

    data.set_transform(decode)
    return data


def test_prepare_regularization_builds_everything_for_images(tmp_path):
    reg = RegularizationArguments(
        label_smoothing=0.1, mixup_alpha=0.2, cutmix_alpha=1.0, class_weights="auto", early_stopping_patience=2
    )
    args = _args(tmp_path)
    train = _train_split_that_must_not_decode([0, 0, 0, 1, 2, 2]).shuffle(seed=0).select(range(6))
    regularization = prepare_regularization(reg, "image", _config(), train, args)
    assert regularization.class_weights == pytest.approx([2 / 3, 2.0, 1.0])
    collator = regularization.collator(image_collate)
    assert isinstance(collator, MixupCollator) and collator.base_collate is image_collate
    assert collator.mixup.mixup_alpha == 0.2 and collator.mixup.cutmix_alpha == 1.0
    assert collator.mixup.label_smoothing == 0.0  # the loss smooths
    logits, labels = _logits_and_labels()
    expected = make_loss_function(C, 0.1, torch.tensor([2 / 3, 2.0, 1.0]))(logits, labels)
    torch.testing.assert_close(regularization.loss_function(logits, labels), expected)
    assert [type(c) for c in regularization.callbacks] == [EarlyStoppingCallback]
    assert args.load_best_model_at_end and args.eval_strategy == IntervalStrategy.EPOCH


def test_prepare_regularization_without_options_changes_nothing(tmp_path):
    args = _args(tmp_path)
    before = args.to_dict()
    regularization = prepare_regularization(RegularizationArguments(), "text", _config(), None, args)
    assert regularization.loss_function is None and regularization.callbacks == []
    assert regularization.collator(image_collate) is image_collate
    assert args.to_dict() == before


def test_prepare_regularization_refuses_what_cannot_apply(tmp_path):
    with pytest.raises(WarmstartError, match="images only"):
        prepare_regularization(RegularizationArguments(mixup_alpha=0.2), "text", _config(), None, _args(tmp_path))
    with pytest.raises(WarmstartError, match="regression head"):
        reg = RegularizationArguments(class_weights="auto")
        prepare_regularization(reg, "text", _config("regression"), None, _args(tmp_path))
    with pytest.raises(WarmstartError, match="class 'green' has no training example"):
        train = _train_split_that_must_not_decode([0, 2, 2])
        prepare_regularization(
            RegularizationArguments(class_weights="auto"), "image", _config(), train, _args(tmp_path)
        )
