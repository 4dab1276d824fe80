"""The one refusal of a misconfigured deployment. Every handler app.py registers
runs behind `serving`, and every route behind http.endpoint, which refuses
first: a cloud function that would talk to 127.0.0.1 or accept the local API
keys answers 503 (an SQS batch stays on its queue) instead of serving."""
import functools

from chalicelib import bootstrap
from chalicelib.domain.errors import ServiceUnavailable


def refuse_if_misconfigured():
    problems = bootstrap.deployment_problems()
    if problems:
        raise ServiceUnavailable("This deployment is misconfigured and refuses to serve: " + "; ".join(problems) + ".")


def serving(handler):
    """`handler`, refusing to run while the deployment is misconfigured."""
    @functools.wraps(handler)
    def guarded(*args, **kwargs):
        refuse_if_misconfigured()
        return handler(*args, **kwargs)
    return guarded
