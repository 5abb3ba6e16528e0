from axserving.errors import Conflict, InvalidRequest, NotFound


class ModelNotFound(NotFound):
    code = "model_not_found"


class InvalidModelPath(InvalidRequest):
    code = "invalid_model_path"


class ModelAlreadyLoaded(Conflict):
    code = "model_already_loaded"


class LoadInProgress(Conflict):
    code = "load_in_progress"


class ModelIdTaken(Conflict):
    code = "model_id_taken"


class NoNodeFits(Conflict):
    code = "no_node_fits"


class NothingToReload(Conflict):
    code = "not_loaded"


class DeploymentNotFound(NotFound):
    code = "deployment_not_found"
