"""The frozen-backbone fast path: the head on cached features is the model's head, and a run with the cache trains
the same head (same weights, same accuracy) as the run that re-computes the backbone every step."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import tiny_text_config, trainer_flags
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from warmstart import backbone_features, cache_features
from warmstart.data import image_collate
from warmstart.feature_cache import CACHE_DIR_NAME, CacheDeclined, CacheSettings, head_inputs, head_model
from warmstart.freezing import TEXT_LAYOUTS
from warmstart.models import wrap_timm_model

sys.path.insert(0, str(Path(__file__).parent.parent / "recipes"))
import image_classification  # noqa: E402
import text_classification  # noqa: E402


@pytest.mark.parametrize("model_type", sorted(TEXT_LAYOUTS))
def test_head_on_cached_features_reproduces_every_text_model(model_type):
    torch.manual_seed(0)
    config = tiny_text_config(model_type)
    if model_type == "modernbert":
        config.classifier_pooling = "mean"  # the pooling that reads the attention mask
    model = AutoModelForSequenceClassification.from_config(config).eval()
    ids = torch.randint(5, 60, (4, 12))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[3, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        features = backbone_features(model, batch)
        head, key = head_model(model)
        torch.testing.assert_close(head(**head_inputs(key, features)).logits, model(**batch).logits)
    assert {n for n, _ in head.named_parameters()} == {
        n for n, _ in model.named_parameters() if not n.startswith(model.base_model_prefix + ".")
    }


@pytest.mark.parametrize("arch", ["test_resnet", "efficientnet_lite0", "vit_tiny_patch16_224", "convnext_atto"])
def test_head_on_cached_features_reproduces_timm_models(arch):
    torch.manual_seed(0)
    kwargs = {"img_size": 32} if arch.startswith("vit") else {}
    model = wrap_timm_model(timm.create_model(arch, pretrained=False, num_classes=3, **kwargs), ["a", "b", "c"]).eval()
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        features = backbone_features(model, {"pixel_values": pixels})
        head, key = head_model(model)
        torch.testing.assert_close(head(**head_inputs(key, features)).logits, model(pixel_values=pixels).logits)
    assert features.ndim == 2  # pooled: the cache holds one vector per image, not a feature map


def test_a_head_the_cut_cannot_reproduce_turns_the_cache_off():
    # DeiT-distilled averages two classifiers: the cache declines rather than train something else
    timm_model = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=2, img_size=32)
    model = wrap_timm_model(timm_model, ["a", "b"])
    split = [{"pixel_values": torch.randn(3, 32, 32), "labels": 0}] * 4
    with pytest.raises(CacheDeclined, match="more than one classifier"):
        cache_features(model, {"train": split}, CacheSettings(image_collate), batch_size=2)


def test_a_head_whose_logits_differ_is_declined_before_training(tmp_path):
    """The first batch's check: a head that does not give the model's logits (here: the model's forward adds a
    bias the head model does not know of) is refused, and no spilled file stays behind."""
    model = wrap_timm_model(timm.create_model("test_resnet", pretrained=False, num_classes=2), ["a", "b"])
    original = model.timm_model.forward
    model.timm_model.forward = lambda x: original(x) + 1.0  # not the path forward_features -> forward_head
    split = [{"pixel_values": torch.randn(3, 32, 32), "labels": 0}] * 4
    settings = CacheSettings(image_collate, memory_budget_mb=0, cache_dir=tmp_path / "cache")
    with pytest.raises(CacheDeclined, match="off by"):
        cache_features(model, {"train": split}, settings, batch_size=2)
    assert not settings.cache_dir.exists()


def test_timm_head_dropout_is_the_models():
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=2, img_size=32, drop_rate=0.3)
    resnet = timm.create_model("test_resnet", pretrained=False, num_classes=2, drop_rate=0.2)
    for timm_model, rate in ((vit, 0.3), (resnet, 0.2)):
        head, _ = head_model(wrap_timm_model(timm_model, ["a", "b"]))
        assert head.timm_model.drop_rate == rate


def _head(out: Path) -> dict[str, torch.Tensor]:
    weights = load_file(out / "model.safetensors")
    return {k: v for k, v in weights.items() if k.startswith(("classifier.", "timm_model.fc."))}


def _results(out: Path) -> dict:
    return json.loads((out / "all_results.json").read_text())


def _cache_record(out: Path) -> dict:
    return yaml.safe_load((out / "warmstart_config.yaml").read_text())["feature_cache"]


def _text_run(tiny_bert, text_files, out, *extra):
    return text_classification.main(
        [
            "--model_name_or_path",
            str(tiny_bert),
            "--train_file",
            str(text_files["train"]),
            "--validation_file",
            str(text_files["validation"]),
            "--freeze_strategy",
            "head_only",
            "--precision",
            "fp32",
            *trainer_flags(out, "--max_steps", "12", "--learning_rate", "0.05", "--eval_strategy", "steps"),
            "--eval_steps",
            "6",
            "--save_strategy",
            "steps",
            "--save_steps",
            "6",
            "--load_best_model_at_end",
            "--probe_solver",  # the Trainer's probe: what these tests compare is the Trainer on and off the cache
            "trainer",
            *extra,
        ]
    )


@pytest.mark.parametrize("grouping", ["false", "true"])
def test_text_head_only_with_and_without_the_cache_trains_the_same_head(tiny_bert, text_files, tmp_path, grouping):
    # grouping by length changes the order of the uncached run's batches, and the cache does not group (features
    # have one size): the same head then needs random order on both sides; with grouping on, the run must agree on
    # the outcome still
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    _text_run(tiny_bert, text_files, cached, "--group_by_length", grouping)
    _text_run(tiny_bert, text_files, plain, "--group_by_length", grouping, "--cache_features", "false")
    assert _cache_record(cached)["used"] and not _cache_record(plain)["used"]
    assert _cache_record(plain)["reason"] == "--cache_features false"
    assert _results(cached)["feature_cache_seconds"] > 0 and "feature_cache_seconds" not in _results(plain)
    assert _cache_record(cached)["splits"]["train"]["feature_shape"] == [2, 32]  # [CLS] state and pooler output
    a, b = _head(cached), _head(plain)
    assert a.keys() == b.keys() == {"classifier.weight", "classifier.bias"}
    if grouping == "false":
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
        assert _results(cached)["eval_loss"] == pytest.approx(_results(plain)["eval_loss"], rel=1e-5)
        assert _results(cached)["eval_accuracy"] == _results(plain)["eval_accuracy"]
    else:  # features have one size: the plain run groups by length, the cached run samples at random
        adjusted = yaml.safe_load((plain / "warmstart_config.yaml").read_text())["training_adjusted"]
        assert adjusted["train_sampling_strategy"] == "group_by_length"
        cached_config = yaml.safe_load((cached / "warmstart_config.yaml").read_text())
        assert "train_sampling_strategy" not in cached_config["training_adjusted"]  # random, as given
    # the backbone is saved as loaded; the run left no feature files behind
    assert not (cached / CACHE_DIR_NAME).exists()
    full = load_file(cached / "model.safetensors")
    start = load_file(tiny_bert / "model.safetensors")
    for name, value in start.items():
        torch.testing.assert_close(full["bert." + name.removeprefix("bert.")], value, rtol=0, atol=0)


def test_cached_evaluation_is_the_saved_model_evaluated(tiny_bert, text_files, tmp_path):
    """The metrics of the cached run are those of the full model it saves, evaluated on the raw validation text."""
    out = tmp_path / "out"
    results = _text_run(tiny_bert, text_files, out)
    model = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    rows = list(csv.DictReader(text_files["validation"].open()))
    with torch.no_grad():
        batch = tokenizer([r["text"] for r in rows], padding=True, return_tensors="pt")
        predicted = model(**batch).logits.argmax(-1).tolist()
    truth = [model.config.label2id[r["label"]] for r in rows]
    accuracy = sum(p == t for p, t in zip(predicted, truth)) / len(rows)
    assert results["eval_accuracy"] == pytest.approx(accuracy)


def _image_run(image_dirs, out, *extra):
    return image_classification.main(
        [
            "--model_name_or_path",
            "test_resnet",
            "--random_init",
            "--train_dir",
            str(image_dirs["train"]),
            "--validation_dir",
            str(image_dirs["validation"]),
            "--image_size",
            "32",
            "--freeze_strategy",
            "head_only",
            "--precision",
            "fp32",
            *trainer_flags(out, "--max_steps", "15", "--learning_rate", "0.05", "--per_device_train_batch_size", "6"),
            "--probe_solver",
            "trainer",
            *extra,
        ]
    )


def test_image_head_only_with_and_without_the_cache_trains_the_same_head(image_dirs, tmp_path):
    cached, plain, spilled = tmp_path / "cached", tmp_path / "plain", tmp_path / "spilled"
    _image_run(image_dirs, cached)
    _image_run(image_dirs, plain, "--cache_features", "false")
    # features over the memory budget (0 MiB here) are memory-mapped from disk, with the same outcome
    _image_run(image_dirs, spilled, "--feature_cache_memory_mb", "0")
    assert _cache_record(cached)["used"] and not _cache_record(cached)["splits"]["train"]["on_disk"]
    assert _cache_record(spilled)["splits"]["train"]["on_disk"]
    assert not (spilled / CACHE_DIR_NAME).exists()
    reference = _head(plain)
    for out in (cached, spilled):
        for name, value in _head(out).items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-5)
        assert _results(out)["eval_accuracy"] == _results(plain)["eval_accuracy"]
    assert _results(cached)["eval_accuracy"] > 0.5  # three colours, chance is 1/3: the head learned on the cache


@pytest.mark.parametrize(
    "extra, reason",
    [
        (["--hflip", "0.5"], "--hflip"),
        (["--random_crop_scale", "0.5", "1.0"], "--random_crop_scale"),
        (["--auto_augment", "rand-m9-mstd0.5"], "--auto_augment"),
        (["--freeze_strategy", "top_k", "--unfreeze_top_k", "1"], "trains more than the head"),
    ],
)
def test_augmentation_or_a_trainable_backbone_runs_without_the_cache(image_dirs, tmp_path, extra, reason):
    out = tmp_path / "out"
    _image_run(image_dirs, out, "--max_steps", "2", *extra)
    record = _cache_record(out)
    assert not record["used"] and reason in record["reason"]


def test_lp_ft_probes_on_cached_features_then_fine_tunes_the_same_model(tiny_bert, text_files, tmp_path):
    """LP-FT's probe runs on the cache, the fine-tuning on the inputs, in one Trainer run; it ends where the run
    without the cache ends (same weights within float rounding), with the backbone trained."""
    cached, plain = tmp_path / "cached", tmp_path / "plain"
    extra = ["--freeze_strategy", "lp_ft", "--num_train_epochs", "4", "--probe_epochs", "2", "--max_steps", "-1"]
    extra += ["--group_by_length", "false", "--eval_strategy", "epoch", "--save_strategy", "epoch"]
    extra += ["--load_best_model_at_end", "false"]  # the last epoch, whose backbone has trained
    _text_run(tiny_bert, text_files, cached, *extra)
    _text_run(tiny_bert, text_files, plain, *extra, "--cache_features", "false")
    assert _cache_record(cached)["used"] and not _cache_record(plain)["used"]
    a, b = load_file(cached / "model.safetensors"), load_file(plain / "model.safetensors")
    start = load_file(tiny_bert / "model.safetensors")
    assert not torch.equal(a["bert.encoder.layer.0.attention.self.query.weight"],
                           start["encoder.layer.0.attention.self.query.weight"])  # fmt: skip
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=name)
    assert _results(cached)["eval_loss"] == pytest.approx(_results(plain)["eval_loss"], rel=1e-4)
    schedule = yaml.safe_load((cached / "warmstart_config.yaml").read_text())["schedule"]
    assert [entry["stage"] for entry in schedule] == [0, 1]


def test_image_lp_ft_on_the_cache_checkpoints_a_channels_last_cnn_and_trains_its_backbone(image_dirs, tmp_path):
    """LP-FT on images: the probe on cached features, then the whole CNN; a checkpoint per epoch of a channels_last
    model (the Trainer saves the wrapper with safetensors, which refuses strided tensors), and gradient
    checkpointing reaches the model through the wrapper."""
    out = tmp_path / "out"
    _image_run(image_dirs, out, "--max_steps", "-1", "--num_train_epochs", "2", "--freeze_strategy", "lp_ft",
               "--probe_epochs", "1", "--channels_last", "true", "--save_strategy", "epoch",
               "--gradient_checkpointing", "true")  # fmt: skip
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["feature_cache"]["used"] and config["feature_cache"]["splits"]["train"]["examples"] == 24
    assert [entry["stage"] for entry in config["schedule"]] == [0, 1]
    assert "channels_last: on (as given)" in config["device_settings"]
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    # the checkpoint at the end of the probe against the saved model: the fine-tuning phase moved the backbone
    probe = load_file(out / "checkpoint-4" / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    stem = next(name for name, value in trained.items() if value.ndim == 4)  # the first convolution
    assert not torch.equal(probe["model.timm_model." + stem], trained[stem])


def test_head_only_on_the_cache_with_gradient_checkpointing_asked_for(tiny_bert, text_files, tmp_path):
    out = tmp_path / "out"
    _text_run(tiny_bert, text_files, out, "--gradient_checkpointing", "true")
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["feature_cache"]["used"]
    assert config["training_adjusted"]["activation_checkpointing"] is False  # nothing to checkpoint in a head


def test_cached_features_are_tensors_a_head_can_train_on(tmp_path):
    """Features computed in inference mode are stored in ordinary tensors: autograd refuses inference tensors."""
    model = wrap_timm_model(timm.create_model("test_resnet", pretrained=False, num_classes=2), ["a", "b"])
    split = [{"pixel_values": torch.randn(3, 32, 32), "labels": i % 2} for i in range(6)]
    for budget in (2048.0, 0.0):  # in memory, and memory-mapped from disk
        settings = CacheSettings(image_collate, memory_budget_mb=budget, cache_dir=tmp_path / f"cache-{budget}")
        cached = cache_features(model, {"train": split}, settings, batch_size=4)
        table = cached.splits["train"]
        assert table.on_disk == (budget == 0.0) and len(table) == 6
        row = table[1]
        assert not row["pixel_values"].is_inference() and row["labels"] == 1
        with torch.no_grad():
            expected = backbone_features(model.eval(), {"pixel_values": split[1]["pixel_values"][None]})[0]
        torch.testing.assert_close(row["pixel_values"], expected)
        loss = cached.head(pixel_values=row["pixel_values"][None], labels=torch.tensor([1])).loss
        loss.backward()
        assert model.timm_model.get_classifier().weight.grad is not None
        model.zero_grad()
        cached.close()
        assert not settings.cache_dir.exists()


def _cache_in_process(rank: int, world: int, port: int, out: Path, budget: float) -> None:
    """One process of a gloo group: computes the cache of a 13-example split (uneven shards) and saves what it got
    and how many examples its backbone saw."""
    import torch.distributed as dist

    dist.init_process_group("gloo", rank=rank, world_size=world, init_method=f"tcp://127.0.0.1:{port}")
    try:
        model, splits = _shardable_model_and_splits()
        seen, forward_features = [], model.timm_model.forward_features

        def counted(pixels):  # every image the backbone runs on, in the check and in the extraction
            seen.append(len(pixels))
            return forward_features(pixels)

        model.timm_model.forward_features = counted
        settings = CacheSettings(image_collate, memory_budget_mb=budget, cache_dir=out / f"cache-rank{rank}")
        cached = cache_features(model, splits, settings, batch_size=4)
        tables = {
            name: (torch.as_tensor(np.array(table.features)), table.labels.clone(), table.on_disk)
            for name, table in cached.splits.items()
        }
        cached.close()
        torch.save({"tables": tables, "seen": sum(seen), "stats": cached.stats}, out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _shardable_model_and_splits():
    torch.manual_seed(0)
    model = wrap_timm_model(timm.create_model("test_resnet", pretrained=False, num_classes=3), ["a", "b", "c"])
    generator = torch.Generator().manual_seed(1)
    splits = {
        name: [{"pixel_values": torch.randn(3, 32, 32, generator=generator), "labels": i % 3} for i in range(size)]
        for name, size in (("train", 13), ("validation", 1))
    }
    return model, splits


@pytest.mark.parametrize("budget", [2048.0, 0.0], ids=["in_memory", "memory_mapped"])
def test_two_processes_compute_a_shard_each_and_both_get_every_feature(budget, tmp_path):
    """Under a 2-process launch each process runs the backbone on its share of the examples only (7 + 6 of 13,
    1 + 0 of 1), then both hold the whole table, equal to the one a single process computes, rows and labels in
    dataset order."""
    import torch.multiprocessing as mp
    from conftest import free_port

    mp.start_processes(_cache_in_process, args=(2, free_port(), tmp_path, budget), nprocs=2, start_method="spawn")
    model, splits = _shardable_model_and_splits()
    alone = cache_features(model, splits, CacheSettings(image_collate), batch_size=4)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert [r["stats"]["train"]["computed_by_this_process"] for r in ranks] == [7, 6]
    assert [r["stats"]["validation"]["computed_by_this_process"] for r in ranks] == [1, 0]
    # each process's backbone saw its shard of both splits, plus its first batch (its whole train shard, in batches
    # of at least 32) once more through the full model for the check of the cut: never all 14 examples
    assert [r["seen"] for r in ranks] == [7 + 1 + 7, 6 + 0 + 6]
    for name, table in alone.splits.items():
        for rank in ranks:
            features, labels, on_disk = rank["tables"][name]
            assert on_disk == (budget == 0.0)
            torch.testing.assert_close(features, table.features, rtol=1e-5, atol=1e-6)
            assert torch.equal(labels, table.labels)
    assert not any((tmp_path / f"cache-rank{r}").exists() for r in range(2))
