from django.db.models import QuerySet

from .errors import DeploymentNotFound, ModelNotFound
from .models import Deployment, RegisteredModel


def list_models() -> QuerySet[RegisteredModel]:
    return RegisteredModel.objects.select_related("file").order_by("name")


def get_model(*, name: str) -> RegisteredModel:
    """The model called `name` or one of its aliases."""
    model = RegisteredModel.objects.select_related("file").filter(name=name).first()
    if model is None:
        model = next((m for m in list_models() if name in m.aliases), None)
    if model is None:
        raise ModelNotFound(f"The model '{name}' does not exist.", param="model")
    return model


def list_deployments() -> QuerySet[Deployment]:
    return Deployment.objects.select_related("model", "node").order_by("-updated_at")


def get_deployment(*, deployment_id: int) -> Deployment:
    deployment = list_deployments().filter(pk=deployment_id).first()
    if deployment is None:
        raise DeploymentNotFound(param="id")
    return deployment
