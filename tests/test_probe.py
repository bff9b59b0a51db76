"""The solved linear probe: the head equals scikit-learn's logistic regression on the same features, for every kind of
head warmstart trains; runs that use it no longer depend on the learning rate."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from conftest import image_data_flags, text_data_flags, tiny_bert_classifier, tiny_text_config, trainer_flags
from sklearn.linear_model import LogisticRegression
from transformers import AutoModelForSequenceClassification

from warmstart.errors import WarmstartError
from warmstart.feature_cache import backbone_features, head_inputs, head_model
from warmstart.models import wrap_timm_model
from warmstart.probe import ProbeUnsolvable, choose_c, classifier_of, fit_logistic_regression, solve_head

sys.path.insert(0, str(Path(__file__).parent.parent / "recipes"))
import image_classification  # noqa: E402
import text_classification  # noqa: E402

LABELS = ["a", "b", "c"]


def _text_batch(n: int, seed: int, vocab: int = 40) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _image_batch(n: int, seed: int, size: int = 32) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(n, 3, size, size, generator=generator)}


def _timm(name: str):
    torch.manual_seed(0)
    return wrap_timm_model(timm.create_model(name, pretrained=False, num_classes=len(LABELS)), LABELS)


def _text(model_type: str):
    torch.manual_seed(0)
    if model_type == "bert":
        return tiny_bert_classifier(num_labels=len(LABELS))
    return AutoModelForSequenceClassification.from_config(tiny_text_config(model_type))


MODELS = {
    "tiny BERT": (lambda: _text("bert"), _text_batch),
    "timm CNN": (lambda: _timm("test_resnet"), _image_batch),
    "timm ViT": (lambda: _timm("test_vit"), lambda n, seed: _image_batch(n, seed, 160)),
    "RoBERTa (dense + tanh)": (lambda: _text("roberta"), lambda n, seed: _text_batch(n, seed, 60)),
    "DistilBERT (pre_classifier + ReLU)": (lambda: _text("distilbert"), lambda n, seed: _text_batch(n, seed, 60)),
    "ELECTRA (dense + GELU)": (lambda: _text("electra"), lambda n, seed: _text_batch(n, seed, 60)),
}


def _head_of_model(model):
    """Everything outside the backbone: the parameters a freshly built classifier's loading would call new."""
    backbone = getattr(model, "timm_model", None) or model.base_model
    in_backbone = {id(p) for p in backbone.parameters()}
    classifier = getattr(backbone, "get_classifier", lambda: None)()
    in_backbone -= {id(p) for p in (classifier.parameters() if classifier is not None else ())}
    return frozenset(n for n, p in model.named_parameters() if id(p) not in in_backbone)


def _features_and_labels(model, make_batch, n: int = 60):
    batch = make_batch(n, 0)
    model.eval()
    with torch.no_grad():
        features = backbone_features(model, batch).float()
    # labels a fixed random linear map of the features decides, with noise: learnable, not separable
    flat = features.flatten(1)
    generator = torch.Generator().manual_seed(1)
    scores = flat @ torch.randn(flat.shape[1], len(LABELS), generator=generator)
    scores = (scores - scores.mean(0)) / scores.std(0) + 0.8 * torch.randn(n, len(LABELS), generator=generator)
    return batch, features, scores.argmax(1)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_solved_head_equals_scikit_learns_logistic_regression_on_the_same_features(name):
    build, make_batch = MODELS[name]
    model = build()
    batch, features, labels = _features_and_labels(model, make_batch)
    head, key = head_model(model)
    fit = solve_head(
        model, head, lambda f: head_inputs(key, f), features, labels, new_weights=_head_of_model(model), seed=0
    )
    assert fit.folds == 5 and fit.converged
    assert fit.c in fit.c_grid and fit.cv_loss[fit.c_grid.index(fit.c)] == min(fit.cv_loss)

    # the classifier's inputs, as the model computes them now (after any pass-through set-up)
    _, classifier = classifier_of(head, len(LABELS))
    seen = []
    hook = classifier.register_forward_hook(lambda _m, args, _o: seen.append(args[0].detach().double()))
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits.double()
    hook.remove()
    x = seen[0].numpy()
    z = (x - x.mean(0)) / np.sqrt((x.std(0) ** 2).mean())  # centred, one scale for all features
    reference = LogisticRegression(C=fit.c, tol=1e-12, max_iter=20000).fit(z, labels.numpy())
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), reference.predict_proba(z), atol=2e-4)
    assert fit.fitted == [n for n, p in model.named_parameters() if any(p is q for q in classifier.parameters())]
    assert fit.fitted[0].endswith(("classifier.weight", "out_proj.weight", "fc.weight", "head.weight"))


def test_a_new_layer_in_front_of_the_classifier_passes_the_features_through():
    """DistilBERT's pre_classifier is new on every fine-tune: set to the identity plus a shift into ReLU's linear
    part, so the classifier sees the backbone's own features (never a random projection left frozen)."""
    model = _text("distilbert")
    batch, features, labels = _features_and_labels(model, lambda n, seed: _text_batch(n, seed, 60))
    head, key = head_model(model)
    fit = solve_head(model, head, lambda f: head_inputs(key, f), features, labels, new_weights=_head_of_model(model))
    assert fit.pass_through == ["pre_classifier.weight", "pre_classifier.bias"]
    first = features[:, 0]
    passed = torch.relu(model.pre_classifier(first)).detach()
    torch.testing.assert_close(passed - model.pre_classifier.bias.detach(), first, atol=1e-5, rtol=0)


def test_a_pretrained_layer_in_front_of_the_classifier_is_kept():
    """A RoBERTa head that came from the checkpoint (a warmstart output for the same labels) is not reset."""
    model = _text("roberta")
    dense = model.classifier.dense.weight.detach().clone()
    batch, features, labels = _features_and_labels(model, lambda n, seed: _text_batch(n, seed, 60))
    head, key = head_model(model)
    fit = solve_head(model, head, lambda f: head_inputs(key, f), features, labels, new_weights=frozenset())
    assert torch.equal(model.classifier.dense.weight, dense)
    assert fit.pass_through == [] and "classifier.dense.weight" in fit.kept


def test_a_new_layer_the_solver_cannot_pass_through_is_refused():
    """A randomly initialised BERT pooler (a checkpoint without one) sits frozen in the backbone, in front of the
    classifier: the solver refuses rather than fit a random projection."""
    model = _text("bert")
    batch, features, labels = _features_and_labels(model, _text_batch)
    head, key = head_model(model)
    new = frozenset({"bert.pooler.dense.weight", "bert.pooler.dense.bias", "classifier.weight", "classifier.bias"})
    with pytest.raises(ProbeUnsolvable, match="bert.pooler.dense"):
        solve_head(model, head, lambda f: head_inputs(key, f), features, labels, new_weights=new)


def test_cross_validation_chooses_by_held_out_loss_on_train_only():
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(200, 20, generator=generator, dtype=torch.float64)
    labels = (z[:, :3] @ torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64) > 0).long()
    c, scores, folds, start = choose_c(z, labels, 2)
    assert folds == 5 and start[0].shape == (2, 20)
    assert scores[c][1] == min(loss for _, loss in scores.values())
    # the folds are seeded: the same answer twice
    assert choose_c(z, labels, 2)[1] == scores


def test_class_weights_and_label_smoothing_are_the_objective():
    """With class weights the solution minimises the weighted loss: a rare class gets predicted more often."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(300, 5, generator=generator, dtype=torch.float64)
    labels = ((z[:, 0] + 0.8 * torch.randn(300, generator=generator, dtype=torch.float64)) > 1.0).long()
    plain = fit_logistic_regression(z, labels, 2, 1.0)
    weights = torch.tensor([0.6, 2.7], dtype=torch.float64)[labels]
    weighted = fit_logistic_regression(z, labels, 2, 1.0, sample_weights=weights)
    predicted = [(z @ s.weight.T + s.bias).argmax(1).sum().item() for s in (plain, weighted)]
    assert predicted[1] > predicted[0]
    # label smoothing keeps the probabilities away from 0 and 1
    smooth = fit_logistic_regression(z, labels, 2, 100.0, label_smoothing=0.2)
    sharp = fit_logistic_regression(z, labels, 2, 100.0)
    top = [torch.softmax(z @ s.weight.T + s.bias, 1).max(1).values.mean().item() for s in (smooth, sharp)]
    assert top[0] < min(top[1], 0.9)
    # and it agrees with scikit-learn's sample weights
    ours = torch.softmax(z @ weighted.weight.T + weighted.bias, 1)[:, 1].numpy()
    # two softmax outputs at C equal scikit-learn's binary model at 2C: compare that one
    reference = LogisticRegression(C=2.0, tol=1e-12, max_iter=10000).fit(z.numpy(), labels.numpy(), weights.numpy())
    np.testing.assert_allclose(ours, reference.predict_proba(z.numpy())[:, 1], atol=1e-5)


# ---------------------------------------------------------------------------------------------- through recipes


def _run_text(tmp_path, tiny_bert, text_files, name, *extra):
    flags = trainer_flags(tmp_path / name, *extra)
    return text_classification.main([*text_data_flags(tiny_bert, text_files), *flags]), tmp_path / name


def test_head_only_accuracy_no_longer_depends_on_the_learning_rate(tmp_path, tiny_bert, text_files):
    from safetensors.torch import load_file

    runs = [
        _run_text(tmp_path, tiny_bert, text_files, f"lr{lr}", "--freeze_strategy", "head_only", "--learning_rate", lr)
        for lr in ("1e-5", "1e-1")
    ]
    (first, out1), (second, out2) = runs
    assert first["eval_accuracy"] == second["eval_accuracy"]
    assert first["eval_loss"] == pytest.approx(second["eval_loss"], abs=1e-6)
    one, two = (load_file(out / "model.safetensors") for out in (out1, out2))
    assert torch.equal(one["classifier.weight"], two["classifier.weight"])
    config = yaml.safe_load((out1 / "warmstart_config.yaml").read_text())
    assert config["probe"]["solver"] == "lbfgs" and config["probe"]["c"] == first["probe_c"]
    assert "cross-validation on the training set" in (out1 / "README.md").read_text()
    # the Trainer's probe does depend on it: the old path is still there when asked for
    trained = [
        _run_text(tmp_path, tiny_bert, text_files, f"sgd{lr}", "--freeze_strategy", "head_only", "--learning_rate", lr,
                  "--probe_solver", "trainer")[1]
        for lr in ("1e-5", "1e-1")
    ]  # fmt: skip
    heads = [load_file(out / "model.safetensors")["classifier.weight"] for out in trained]
    assert (heads[0] - heads[1]).abs().max() > 1e-2


def test_lp_ft_fine_tunes_from_the_solved_probe(tmp_path, tiny_bert, text_files):
    results, out = _run_text(tmp_path, tiny_bert, text_files, "lpft", "--freeze_strategy", "lp_ft")
    config = yaml.safe_load((out / "warmstart_config.yaml").read_text())
    assert config["probe"]["solver"] == "lbfgs"
    # the whole run fine-tunes everything, from its first step
    assert config["schedule"][0]["step"] == 0 and config["schedule"][0]["stage"] == 1
    assert "blocks.1" in config["schedule"][0]["training"]
    assert results["trainable_params"] == results["total_params"]


def test_the_default_learning_rate_is_the_strategys_own(tmp_path, tiny_bert, text_files):
    from warmstart.policy import default_learning_rate

    flags = [f for f in trainer_flags(tmp_path / "x") if f not in ("--learning_rate", "1e-3")]

    text_classification.main([*text_data_flags(tiny_bert, text_files), *flags, "--freeze_strategy", "bitfit"])
    config = yaml.safe_load((tmp_path / "x" / "warmstart_config.yaml").read_text())
    assert config["learning_rate"]["value"] == default_learning_rate("bitfit", "text") == 1e-3
    assert "default for bitfit" in config["learning_rate"]["source"]
    assert json.loads((tmp_path / "x" / "all_results.json").read_text())["train_samples"] > 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--freeze_strategy", "head_only", "--probe_solver", "lbfgs", "--hflip", "0.5"],
         "--probe_solver lbfgs solves the head on cached backbone features, and they are not cached here"),
        (["--freeze_strategy", "lp_ft", "--probe_solver", "trainer"], "needs --probe_epochs"),
        (["--freeze_strategy", "lp_ft", "--cache_features", "false"], "give --probe_epochs N"),
        (["--freeze_strategy", "full", "--probe_train_rest", "true"], "--probe_train_rest is for"),
    ],
)  # fmt: skip
def test_a_probe_that_cannot_be_solved_is_one_line(tmp_path, image_dirs, extra, message):
    with pytest.raises(WarmstartError, match=message.replace("(", r"\(")) as err:
        image_classification.main([*image_data_flags(image_dirs), *trainer_flags(tmp_path / "out"), *extra])
    assert "\n" not in str(err.value)
