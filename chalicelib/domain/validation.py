"""Pure request validation: every rejection is a ValidationError with a message
that names the field, never a 500."""
import json
import re

from chalicelib.domain.errors import ValidationError

MAX_INT = 2**53  # larger numbers lose precision in JSON clients
# The deepest body the contract has is 4 levels ({"orders": [{"items": [{...}]}]});
# far deeper input would only exhaust the interpreter's recursion limit later.
MAX_JSON_DEPTH = 32
MAX_ECHO_NAMES = 20
_SURROGATES = re.compile("[\ud800-\udfff]")


def echo(value, limit=64):
    """A client's string quoted back in a message or result: valid Unicode (a
    lone surrogate becomes U+FFFD) and at most `limit` characters."""
    text = _SURROGATES.sub("\ufffd", str(value))
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def parse_json(raw, what="request body", allow_surrogates=False):
    """JSON text -> value, or ValidationError: not JSON, nested deeper than
    MAX_JSON_DEPTH, or (unless allowed) a string holding a lone surrogate
    ("\\ud800"), which is no Unicode text and cannot be stored or sent back."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise ValidationError(f"The {what} is nested deeper than {MAX_JSON_DEPTH} levels.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationError(f"The {what} is not valid JSON: {exc}.") from None
    stack = [(value, 1)]
    while stack:  # iterative: a deep value must not recurse here either
        node, depth = stack.pop()
        if isinstance(node, str):
            if not allow_surrogates and _SURROGATES.search(node):
                raise ValidationError(f"The {what} holds a string with a lone UTF-16 surrogate (not Unicode text).")
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > MAX_JSON_DEPTH:
            raise ValidationError(f"The {what} is nested deeper than {MAX_JSON_DEPTH} levels.")
        if isinstance(node, dict):
            stack.extend((key, depth) for key in node)
            node = node.values()
        stack.extend((child, depth + 1) for child in node)
    return value


def require_object(body, what="request body"):
    if not isinstance(body, dict):
        raise ValidationError(f"The {what} must be a JSON object.")
    return body


def reject_unknown(body, allowed, what="request body"):
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        # Names are the client's: quoted cut short, and only the first few.
        names = [echo(name) for name in unknown[:MAX_ECHO_NAMES]]
        more = f" (and {len(unknown) - len(names)} more)" if len(unknown) > len(names) else ""
        raise ValidationError(f"Unknown field(s) in {what}: {', '.join(names)}{more}.",
                              details={"unknown_fields": names})


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


# One optional minus and ASCII digits: "--5", "+5", " 5", "٥" or "1e3" are not integers here.
_QUERY_INT = re.compile(r"-?[0-9]{1,18}")


def query_int(params, name, default, minimum, maximum):
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    if not _QUERY_INT.fullmatch(raw):
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
