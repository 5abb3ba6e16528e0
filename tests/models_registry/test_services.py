import pytest

from audit.models import AuditEvent
from models_registry.models import ModelFile, RegisteredModel
from models_registry.services import bundled_model_path, register_bundled_model

pytestmark = pytest.mark.django_db


def test_register_bundled_model_catalogues_the_file_by_digest_once():
    first = register_bundled_model()
    again = register_bundled_model()

    assert first.pk == again.pk
    assert first.name == "smollm2"
    assert first.aliases == ["default"]
    model_file = ModelFile.objects.get()
    assert len(model_file.sha256) == 64
    assert model_file.size_bytes == bundled_model_path().stat().st_size
    assert RegisteredModel.objects.count() == 1
    assert AuditEvent.objects.filter(action="model.registered").count() == 1


def test_bundled_model_is_a_gguf_file():
    with bundled_model_path().open("rb") as fh:
        assert fh.read(4) == b"GGUF"
