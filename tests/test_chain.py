"""Chains of recipes from one YAML file: the worked digits chain's config runs (on a small budget), links start from
earlier links' outputs, seeds repeat a link, and malformed chains are refused before anything runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import datasets
import pytest
import yaml

from warmstart import WarmstartError
from warmstart.chain import load_chain
from warmstart.data.digits import write_digits_chain_data

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
sys.path.insert(0, str(RECIPES))
import chain as chain_recipe  # noqa: E402


def test_digits_chain_data_hides_labels_and_holds_out_validation(tmp_path):
    paths = write_digits_chain_data(tmp_path, image_size=16, labeled_fraction=0.1, seed=0)
    unlabeled, labeled, validation = (datasets.Dataset.from_parquet(str(paths[k])) for k in paths)
    assert unlabeled.column_names == ["image"] and len(unlabeled) == 1437
    assert len(labeled) == 143 and sorted(set(labeled["label"])) == list(range(10))  # stratified: every digit
    assert len(validation) == 360 and validation[0]["image"].size == (16, 16)
    as_bytes = lambda data: {image.tobytes() for image in data["image"]}  # noqa: E731
    assert as_bytes(labeled) <= as_bytes(unlabeled)  # the labeled images are some of the pretraining images
    assert len(as_bytes(validation) & as_bytes(unlabeled)) < 5  # held out (a few digits scan identically)
    with pytest.raises(ValueError, match="leaves a digit without a labeled example"):
        write_digits_chain_data(tmp_path / "few", labeled_fraction=0.003)


def test_the_worked_digits_chain_runs_on_a_small_budget(tmp_path):
    spec = yaml.safe_load((RECIPES / "configs" / "digits_chain.yaml").read_text())
    for link in spec["links"]:
        if link["recipe"] != "digits_data":
            link["args"].update(max_steps=2, per_device_train_batch_size=8, save_strategy="no")
        if link.get("seeds"):
            link["seeds"] = [0, 1] if link["name"] == "full" else [0]
    small = tmp_path / "chain.yaml"
    small.write_text(yaml.safe_dump(spec))
    rows = chain_recipe.main([str(small), "--output_dir", str(tmp_path / "out")])
    by_link = {row["link"]: row for row in rows}
    assert list(by_link) == ["data", "pretrain", "head_only", "full", "scratch_head_only", "scratch_full"]
    assert by_link["pretrain"]["metric"] == "eval_loss" and by_link["full"]["metric"] == "eval_accuracy"
    assert len(by_link["full"]["per_seed"]) == 2
    assert by_link["full"]["mean"] == pytest.approx(sum(by_link["full"]["per_seed"]) / 2, abs=1e-4)
    out = tmp_path / "out"
    assert json.loads((out / "chain_results.json").read_text()) == rows
    assert "| scratch_full | image_classification | eval_accuracy |" in (out / "chain_results.md").read_text()
    config = yaml.safe_load((out / "full-seed1" / "warmstart_config.yaml").read_text())
    assert config["model"]["model_name_or_path"] == str(out / "pretrain")
    assert config["training"]["seed"] == 1
    assert [r["name"] for r in config["lineage"]["runs"]] == ["pretrain", "full-seed1"]
    scratch = yaml.safe_load((out / "scratch_full-seed0" / "warmstart_config.yaml").read_text())
    assert scratch["lineage"] == {
        "base_model": "resnet10t (random init)",
        "runs": scratch["lineage"]["runs"][-1:],  # a chain of its own: nothing before it
    }


@pytest.mark.parametrize(
    ("links", "message"),
    [
        (
            [{"name": "a", "recipe": "x", "args": {"model_name_or_path": "{b}"}}, {"name": "b", "recipe": "x"}],
            "not an earlier link",
        ),
        (
            [{"name": "a", "recipe": "x", "seeds": [0, 1]}, {"name": "b", "recipe": "x", "args": {"m": "{a}"}}],
            "several seeds",
        ),
        ([{"name": "a", "recipe": "x"}, {"name": "a", "recipe": "y"}], "names must be unique"),
        ([{"name": "a", "recipe": "x", "seed": [0]}], "unknown key 'seed'"),
        ([{"name": "a", "recipe": "x", "seeds": "0"}], "must be a list of integers"),
        ([{"recipe": "x"}], "needs a `name` and a `recipe`"),
        ([], "needs a list of links"),
    ],
)
def test_malformed_chains_are_refused(links, message, tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"links": links}))
    with pytest.raises(WarmstartError, match=message):
        load_chain(path)


def test_unknown_recipe_and_unknown_only_are_refused(tmp_path):
    path = tmp_path / "chain.yaml"
    path.write_text(yaml.safe_dump({"links": [{"name": "a", "recipe": "no_such_recipe"}]}))
    with pytest.raises(WarmstartError, match="unknown recipe 'no_such_recipe'.*image_classification"):
        chain_recipe.main([str(path), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(WarmstartError, match="--only b: no link of that name"):
        chain_recipe.main([str(path), "--only", "b"])
    assert not (tmp_path / "out").exists()


def test_links_start_from_the_outputs_written_including_a_one_seed_link(tmp_path):
    path = tmp_path / "chain.yaml"
    links = [
        {"name": "pre", "recipe": "pretrain_autoencoder", "seeds": [7], "args": {"x": 1}},
        {
            "name": "ft",
            "recipe": "image_classification",
            "seeds": [0, 1],
            "args": {"model_name_or_path": "{pre}", "data": "{output_dir}/d"},
        },
    ]
    path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), "links": links}))
    calls = []

    def runner(recipe, args):
        calls.append((recipe, args))
        return {"eval_accuracy": 0.5 + 0.25 * len(calls)}

    from warmstart.chain import run_chain

    rows = run_chain(load_chain(path), runner=runner)
    out = tmp_path / "out"
    assert calls[0] == ("pretrain_autoencoder", {"x": 1, "seed": 7, "output_dir": str(out / "pre-seed7")})
    for seed, (recipe, args) in zip((0, 1), calls[1:]):
        assert recipe == "image_classification"
        assert args["model_name_or_path"] == str(out / "pre-seed7")  # the one run's output
        assert args["data"] == str(out / "d")
        assert args["output_dir"] == str(out / f"ft-seed{seed}")
    assert rows[1]["per_seed"] == [1.0, 1.25] and rows[1]["mean"] == 1.125
