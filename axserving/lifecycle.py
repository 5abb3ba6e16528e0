"""This gateway process's own serving state, read by readiness and the graceful stop."""


class GatewayState:
    draining = False
    inflight = 0


gateway = GatewayState()
