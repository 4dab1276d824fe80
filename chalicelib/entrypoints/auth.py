"""API keys and plans. Locally the keys come from configuration; in the cloud
API Gateway has already checked the key, and the admin plan is recognised by
the key id listed in ADMIN_API_KEY_IDS."""
from chalicelib.domain.errors import Forbidden


def plan_for_request(settings, headers, context):
    """The caller's plan name, or Forbidden."""
    key = headers.get("x-api-key")
    if settings.api_keys_enabled:
        plan = settings.api_keys.get(key or "")
        if plan is None:
            raise Forbidden("A valid x-api-key header is required.")
        return key, plan
    key_id = (context.get("identity") or {}).get("apiKeyId") or ""
    admin_ids = {k for k in (settings.get("ADMIN_API_KEY_IDS") or "").split(",") if k}
    if not key and not key_id:
        raise Forbidden("A valid x-api-key header is required.")
    return key or key_id, "admin" if key_id in admin_ids else "standard"


def require_admin(plan):
    if plan != "admin":
        raise Forbidden("This route needs an admin API key.")
