from axserving.errors import NotFound


class ModelNotFound(NotFound):
    code = "model_not_found"
