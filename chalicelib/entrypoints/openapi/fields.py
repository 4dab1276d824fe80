"""JSON Schema building blocks of the OpenAPI document."""


def ref(name):
    return {"$ref": f"#/components/schemas/{name}"}


NO_NUL = r"^[^\u0000]*$"


def string(min_length, max_length, description=None):
    """A body string: no NUL, and (when required) something left once trimmed of whitespace."""
    schema = {"type": "string", "minLength": min_length, "maxLength": max_length,
              "pattern": r"^[^\u0000]*[^\s\u0000][^\u0000]*$" if min_length else NO_NUL}
    if description:
        schema["description"] = description
    return schema


def integer(minimum, maximum, description=None):
    schema = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if description:
        schema["description"] = description
    return schema


def object_schema(properties, required=(), description=None, closed=True):
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if closed:
        schema["additionalProperties"] = False
    if description:
        schema["description"] = description
    return schema


TIMESTAMP = {"type": "string", "format": "date-time", "description": "ISO-8601 UTC with microseconds"}
