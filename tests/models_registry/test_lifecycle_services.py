import os
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from audit.models import AuditEvent
from fleet.errors import NodeNotFound
from fleet.models import Node
from models_registry import services, tasks
from models_registry.errors import InvalidModelPath, LoadInProgress, ModelAlreadyLoaded, NoNodeFits
from models_registry.gguf_info import estimate_memory
from models_registry.models import Deployment, ModelFile, RegisteredModel

pytestmark = pytest.mark.django_db


@pytest.fixture
def model_dir(tmp_path, settings):
    settings.AXS_MODEL_DIRS = [str(tmp_path / "models")]
    (tmp_path / "models").mkdir()
    return tmp_path / "models"


@pytest.fixture
def bundled():
    return services.register_bundled_model()


def make_node(name: str, *, free: int = 8 * 2**30, **telemetry) -> Node:
    now = timezone.now()
    return Node.objects.create(
        name=name, address=f"http://{name}:1", status=Node.Status.READY, started_at=now, last_heartbeat=now,
        telemetry={"free_memory_bytes": free, **telemetry},
    )


def test_register_reads_the_gguf_header(bundled):
    f = bundled.file

    assert (f.architecture, f.quantization, f.context_length, f.has_chat_template) == ("llama", "Q4_1", 8192, True)
    assert 130_000_000 < f.parameter_count < 140_000_000
    assert f.metadata["n_layer"] == 30


@pytest.mark.parametrize("where", ["outside", "dotdot", "symlink", "not-gguf", "missing"])
def test_bad_paths_are_refused_and_nothing_changes(model_dir, tmp_path, where):
    outside = tmp_path / "elsewhere.gguf"
    outside.write_bytes(b"GGUF" + b"\0" * 64)
    if where == "outside":
        path = str(outside)
    elif where == "dotdot":
        path = str(model_dir / ".." / "elsewhere.gguf")
    elif where == "symlink":
        (model_dir / "link.gguf").symlink_to(outside)
        path = str(model_dir / "link.gguf")
    elif where == "not-gguf":
        (model_dir / "notes.gguf").write_text("not a model")
        path = str(model_dir / "notes.gguf")
    else:
        path = str(model_dir / "absent.gguf")

    with pytest.raises(InvalidModelPath) as err:
        services.register_model(name="x", path=path)

    assert err.value.status == 400 and err.value.param == "path"
    assert not ModelFile.objects.exists() and not RegisteredModel.objects.exists()


def test_a_second_id_can_share_the_file_with_other_settings(bundled):
    alt = services.register_model(name="smollm2-small-ctx", path=bundled.file.path, n_ctx=512, embeddings=False)

    assert alt.file_id == bundled.file_id
    assert (alt.n_ctx, alt.embeddings) == (512, False)
    assert ModelFile.objects.count() == 1


def test_deploy_on_a_named_node_enqueues_the_load_on_that_nodes_queue(bundled, django_capture_on_commit_callbacks, monkeypatch):
    make_node("gpu-01")
    sent = []
    monkeypatch.setattr(tasks.load_model, "apply_async", lambda **kw: sent.append(kw))

    with django_capture_on_commit_callbacks(execute=True):
        deployment = services.deploy_model(model_name="smollm2", node_name="gpu-01", actor="alice")

    assert (deployment.state, deployment.desired) == (Deployment.State.PENDING, Deployment.Desired.LOADED)
    assert sent == [{"kwargs": {"deployment_id": deployment.pk}, "queue": "node.gpu-01"}]
    assert AuditEvent.objects.filter(action="deployment.load_requested", actor="alice").count() == 1


def test_deploy_refuses_unknown_node_and_repeats(bundled, django_capture_on_commit_callbacks):
    with pytest.raises(NodeNotFound):
        services.deploy_model(model_name="smollm2", node_name="nope", actor="a")
    make_node("gpu-01")
    with django_capture_on_commit_callbacks():
        services.deploy_model(model_name="smollm2", node_name="gpu-01", actor="a")

    with pytest.raises(LoadInProgress):
        services.deploy_model(model_name="smollm2", node_name="gpu-01", actor="a")
    Deployment.objects.update(state=Deployment.State.READY)
    with pytest.raises(ModelAlreadyLoaded):
        services.deploy_model(model_name="smollm2", node_name="gpu-01", actor="a")


def test_placement_picks_the_node_with_room_and_explains_when_none_fits(bundled, django_capture_on_commit_callbacks):
    need = estimate_memory(size_bytes=bundled.file.size_bytes, metadata=bundled.file.metadata, n_ctx=bundled.n_ctx, embeddings=True)
    make_node("tiny", free=need // 2)
    make_node("roomy", free=need * 4)
    make_node("capped", free=need * 8, max_models=1)
    other = services.register_model(name="other", path=bundled.file.path)
    Deployment.objects.create(model=other, node=Node.objects.get(name="capped"), state=Deployment.State.READY, updated_at=timezone.now())

    with django_capture_on_commit_callbacks():
        assert services.deploy_model(model_name="smollm2", actor="a").node.name == "roomy"
    with pytest.raises(NoNodeFits) as err:
        services.deploy_model(model_name="smollm2", actor="a")

    assert err.value.status == 409
    assert "tiny: needs" in err.value.message and "capped: holds 1 model(s)" in err.value.message
    assert "roomy: already holds it" in err.value.message


def test_estimate_counts_weights_kv_cache_and_the_embedding_twin():
    meta = {"n_layer": 30, "n_embd": 576, "n_head": 9, "n_head_kv": 3}
    one = estimate_memory(size_bytes=100 * 2**20, metadata=meta, n_ctx=2048, embeddings=False)

    assert one == 100 * 2**20 + 2 * 30 * 2048 * 3 * 64 * 2 + 64 * 2**20
    assert estimate_memory(size_bytes=100 * 2**20, metadata=meta, n_ctx=2048, embeddings=True) == 2 * one


def test_idle_eviction_unloads_idle_models_and_keeps_pinned_ones(bundled, django_capture_on_commit_callbacks):
    node = make_node("gpu-01")
    idle = services.register_model(name="idle", path=bundled.file.path, idle_ttl_seconds=60)
    pinned = services.register_model(name="pinned", path=bundled.file.path, idle_ttl_seconds=60, pinned=True)
    busy = services.register_model(name="busy", path=bundled.file.path, idle_ttl_seconds=60)
    long_ago, just_now = timezone.now() - timedelta(minutes=5), timezone.now()
    for model, used in ((idle, long_ago), (pinned, long_ago), (busy, just_now)):
        Deployment.objects.create(model=model, node=node, state=Deployment.State.READY, updated_at=long_ago, last_used_at=used)

    with django_capture_on_commit_callbacks() as callbacks:
        assert services.evict_idle_models() == 1

    states = dict(Deployment.objects.values_list("model__name", "state"))
    assert states == {"idle": "unloading", "pinned": "ready", "busy": "ready"}
    assert len(callbacks) == 1
    assert AuditEvent.objects.filter(action="deployment.evicted").count() == 1


def test_a_load_on_a_silent_node_fails_with_the_reason(bundled, settings):
    settings.AXS_NODE_TTL = 6
    node = make_node("gone")
    Node.objects.filter(pk=node.pk).update(last_heartbeat=timezone.now() - timedelta(seconds=30))
    Deployment.objects.create(model=bundled, node=node, state=Deployment.State.LOADING, updated_at=timezone.now())

    assert services.fail_orphaned_deployments() == 1

    deployment = Deployment.objects.get()
    assert deployment.state == Deployment.State.FAILED
    assert "gone stopped heartbeating while the deployment was loading" in deployment.error
