"""Stored pipeline configs carry a version; one stored before there were versions still reads, and
still means what it meant (version 1: finetune and quantize_qat left the labels out)."""

from __future__ import annotations

import json
from pathlib import Path


import tiny_models
from optimizer_pipeline import CONFIG_VERSION, PipelineConfig, atomic_write_text, inspect_upload, read_stored_config, stored_config
from server.settings import Settings
from server.store import Store, new_model_id, now, open_store
from server_harness import FORCED_FREEZE, predict, running, wait_for
from wire.contract.models import ModelMeta

TRAINING_PLAN = [{"pass": "prune_unstructured", "amount": 0.3}, {"pass": "finetune", "epochs": 2}]


def _stage(store: Store, config: PipelineConfig | None) -> str:
    """A real upload's files and summary, indexed with a queued job (what an accepted upload leaves)."""
    archive, inputs = tiny_models.mlp()
    calibration = tiny_models.calibration_bytes(inputs)
    model_id = new_model_id()
    directory = store.stage_files(model_id, {"original.pt": archive, "calibration.bin": calibration})
    summary = inspect_upload(directory / "original.pt", directory / "calibration.bin", config=config)
    store.add_model(ModelMeta(id=model_id, name=f"m-{model_id[:6]}", created_at=now(), summary=summary, config=stored_config(config)))
    return model_id


def _store_the_old_way(store: Store, model_id: str, config: dict) -> None:
    """Rewrite the model's stored metadata as the server wrote it before configs had a version: the
    uploaded JSON object as it came."""
    meta = json.loads(store.file(model_id, "model.json").read_text())
    meta["config"] = config
    atomic_write_text(store.file(model_id, "model.json"), json.dumps(meta))
    with store.db.transaction() as tx:
        tx.execute("UPDATE models SET meta = ? WHERE id = ?", (json.dumps(meta), model_id))


def _open(directory: Path) -> Store:
    return open_store(Settings(store=str(directory)))


def test_a_new_config_round_trips_with_its_version(tmp_path: Path):
    store = _open(tmp_path / "store")
    config = PipelineConfig.model_validate({"plan": TRAINING_PLAN, "threads": 2})
    model_id = _stage(store, config)
    stored = json.loads(store.file(model_id, "model.json").read_text())["config"]
    # What the user set, plus the version: the defaults are the version's to say.
    assert stored == {"plan": TRAINING_PLAN, "threads": 2, "version": CONFIG_VERSION}
    again = read_stored_config(_open(tmp_path / "store").get(model_id).config)
    assert again == config and again.version == CONFIG_VERSION
    assert again.plan[1].label_weight == 0.5  # the labels take part, as this version says


def test_a_config_stored_without_a_version_means_what_it_meant(tmp_path: Path):
    store = _open(tmp_path / "store")
    model_id = _stage(store, PipelineConfig.model_validate({"plan": TRAINING_PLAN}))
    _store_the_old_way(store, model_id, {"plan": TRAINING_PLAN, "threads": 2})
    config = read_stored_config(_open(tmp_path / "store").get(model_id).config)
    assert config.version == 1 and config.threads == 2
    assert config.plan[1].label_weight == 0.0  # before versions, fine-tuning did not train on labels
    # An explicit label_weight in an old config is kept.
    explicit = [TRAINING_PLAN[0], {**TRAINING_PLAN[1], "label_weight": 2.0}]
    _store_the_old_way(store, model_id, {"plan": explicit})
    assert read_stored_config(_open(tmp_path / "store").get(model_id).config).plan[1].label_weight == 2.0


def test_a_model_stored_with_an_unversioned_config_is_optimized_and_served(tmp_path: Path):
    directory = tmp_path / "store"
    store = _open(directory)
    model_id = _stage(store, PipelineConfig.model_validate(FORCED_FREEZE))
    _store_the_old_way(store, model_id, FORCED_FREEZE)
    with running(directory) as server:
        info = wait_for(server.url, model_id)
        assert info["state"] == "ready", info
        assert info["default_variant"] == "optimized" and info["chosen"]["candidate"] == "freeze"
        assert info["config"] == {**FORCED_FREEZE, "version": 1}
        _, inputs = tiny_models.mlp()
        answer = predict(server.url, model_id, inputs[0][:2])
        assert answer.status_code == 200, answer.text
        assert answer.json()["variant"] == "optimized"
