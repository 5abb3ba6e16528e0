"""An unload and a heartbeat of the same node at the same moment both finish (no deadlock on the node and deployment rows)."""

import threading

import pytest
from django.db import connections, transaction
from django.utils import timezone

from fleet.models import Node
from models_registry import services, tasks
from models_registry.models import Deployment

pytestmark = pytest.mark.django_db(transaction=True)  # two threads, two connections, real row locks


def test_an_unload_during_a_heartbeat_of_its_node_does_not_deadlock(monkeypatch):
    model = services.register_bundled_model()
    now = timezone.now()
    node = Node.objects.create(name="n1", address="http://n1:1", status=Node.Status.READY, started_at=now, last_heartbeat=now)
    Deployment.objects.create(model=model, node=node, state=Deployment.State.READY, progress=100, updated_at=now)
    monkeypatch.setattr(tasks.unload_model, "apply_async", lambda **kw: None)  # no broker needed: the rows are the point
    node_locked, unload_started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def heartbeat_like() -> None:
        """What fleet.services.heartbeat_node does: lock the node row, then write its deployment rows."""
        try:
            with transaction.atomic():
                Node.objects.select_for_update().get(pk=node.pk)
                node_locked.set()
                unload_started.wait(5)
                threading.Event().wait(0.5)  # the unload has taken its locks by now
                Deployment.objects.filter(node=node).update(last_used_at=timezone.now())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    def unload() -> None:
        try:
            node_locked.wait(5)
            unload_started.set()
            services.unload_model(model_name=model.name, actor="test")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=heartbeat_like), threading.Thread(target=unload)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)

    assert errors == []
    assert Deployment.objects.get(node=node).state == Deployment.State.UNLOADING
