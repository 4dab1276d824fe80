"""Who is calling (chalicelib/domain/clients.py). Locally the app checks the
key against the client definitions; in the cloud API Gateway has checked it
and the handler gets the key's id, which API_KEY_CLIENTS maps to its client."""
from chalicelib.domain.errors import Forbidden
from chalicelib.ops.logs import logger


def caller_for_request(settings, headers, context):
    """The Caller, or Forbidden."""
    registry = settings.clients
    if settings.api_keys_enabled:
        caller = registry.local_keys().get(headers.get("x-api-key") or "")
        if caller is None:
            raise Forbidden("A valid x-api-key header is required.")
        return caller
    key_id = (context.get("identity") or {}).get("apiKeyId") or ""
    if not key_id:
        raise Forbidden("A valid x-api-key header is required.")
    caller = registry.cloud_caller(key_id, settings.api_key_clients)
    if caller.client.startswith("key:"):
        logger.warning("API key not in the client definitions", extra={"api_key_id": key_id})
    return caller


def require_admin(caller):
    if not caller.admin:
        raise Forbidden("This route needs an admin API key.")
