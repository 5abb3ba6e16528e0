from axserving.errors import Conflict, NotFound


class NodeNotFound(NotFound):
    code = "node_not_found"
    message = "No such node; a node that gets this re-registers."


class NodeBusy(Conflict):
    code = "node_busy"
    message = "The node still has requests in flight; drain it first or pass ?force=true."
