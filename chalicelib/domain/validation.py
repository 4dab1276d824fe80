"""Pure request validation: every rejection is a ValidationError with a message
that names the field, never a 500."""
from chalicelib.domain.errors import ValidationError

MAX_INT = 2**53  # larger numbers lose precision in JSON clients


def require_object(body, what="request body"):
    if not isinstance(body, dict):
        raise ValidationError(f"The {what} must be a JSON object.")
    return body


def reject_unknown(body, allowed, what="request body"):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValidationError(f"Unknown field(s) in {what}: {', '.join(unknown)}.", details={"unknown_fields": unknown})


def integer(value, field, minimum=None, maximum=MAX_INT):
    # bool is an int in Python but never a valid quantity or id.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"'{field}' must be an integer.", details={"field": field})
    if minimum is not None and value < minimum:
        raise ValidationError(f"'{field}' must be at least {minimum}.", details={"field": field})
    if maximum is not None and value > maximum:
        raise ValidationError(f"'{field}' must be at most {maximum}.", details={"field": field})
    return value


def string(value, field, min_length=1, max_length=255):
    if not isinstance(value, str):
        raise ValidationError(f"'{field}' must be a string.", details={"field": field})
    value = value.strip()
    if not min_length <= len(value) <= max_length:
        raise ValidationError(
            f"'{field}' must be {min_length} to {max_length} characters long.", details={"field": field}
        )
    if "\x00" in value:
        raise ValidationError(f"'{field}' must not contain NUL characters.", details={"field": field})
    return value


def choice(value, field, options):
    if value not in options:
        raise ValidationError(f"'{field}' must be one of: {', '.join(options)}.", details={"field": field})
    return value


def path_id(raw, field="id"):
    """Ids in paths: positive decimal integers within range, nothing else."""
    if not isinstance(raw, str) or not raw.isdigit() or not raw.isascii() or len(raw) > 18:
        raise ValidationError(f"'{field}' must be a positive integer.", details={"field": field})
    value = int(raw)
    if value < 1:
        raise ValidationError(f"'{field}' must be a positive integer.", details={"field": field})
    return value


def query_int(params, name, default, minimum, maximum):
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.lstrip("-").isdigit() or not raw.isascii() or len(raw) > 18:
        raise ValidationError(f"'{name}' must be an integer.", details={"field": name})
    return integer(int(raw), name, minimum, maximum)


def query_bool(params, name):
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    lowered = raw.lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ValidationError(f"'{name}' must be true or false.", details={"field": name})
