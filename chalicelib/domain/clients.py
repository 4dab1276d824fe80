"""Who calls: API clients, each with its own keys on a plan.

Clients are defined with the plans in chalicelib/usage_plans.json
(`scripts/clients.py` adds, rotates and revokes them). A client has live key
generations (`keys`; two during a rotation) and `revoked` ones that never
come back. The caller's identity is the key's id: in AWS API Gateway's
`requestContext.identity.apiKeyId`, mapped to its client by API_KEY_CLIENTS
(the package fills it from the generated keys); locally the same id comes from
the same definitions, with a key value derived from client and generation.
Orders belong to the client (stable across rotations), not to one key.

A plan limits each key (`rate_per_second`, `burst`: API Gateway's usage plan
in AWS, the app's bucket locally). A plan whose key ships in an app (not a
trusted server's) also limits each person who uses it
(`person_rate_per_second`, `person_burst`; chalicelib/domain/people.py): its
one key is shared by every install, so without them one abuser would spend
everyone's bucket. Pure."""
import functools
import re
from dataclasses import dataclass

CLIENT_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
LOCAL_KEY = "shop-local-{client}-key-{generation:04d}"


@dataclass(frozen=True)
class Caller:
    key_id: str
    client: str
    plan: str
    admin: bool
    trusted: bool  # a trusted server's plan: may name any user_id in order bodies
    per_person: bool = False  # the plan limits each person (customer or address) besides the key


def local_key_id(client, generation):
    return f"local-{client}-{generation}"


class ClientDefinitionError(ValueError):
    pass


PERSON_LIMITS = ("person_rate_per_second", "person_burst")


def _positive(value, whole=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        return False
    return not whole or isinstance(value, int)


def _check_limits(name, plan):
    rate, burst = plan.get("rate_per_second"), plan.get("burst")
    if not _positive(rate) or not _positive(burst, whole=True):
        raise ClientDefinitionError(f"plan {name}: rate_per_second must be > 0 and burst a whole number >= 1")
    given = [field for field in PERSON_LIMITS if field in plan]
    if plan.get("trusted_server"):
        if given:
            raise ClientDefinitionError(f"plan {name}: a trusted server's plan is limited per key; "
                                        f"{', '.join(given)} are for plans whose key ships in an app")
        return
    if len(given) != len(PERSON_LIMITS):
        raise ClientDefinitionError(f"plan {name}: its key ships in an app (not trusted_server), so it needs "
                                    "person_rate_per_second and person_burst: every install shares the key")
    person_rate, person_burst = plan["person_rate_per_second"], plan["person_burst"]
    if not _positive(person_rate) or not _positive(person_burst, whole=True):
        raise ClientDefinitionError(f"plan {name}: person_rate_per_second must be > 0 and person_burst a whole "
                                    "number >= 1")
    if person_rate > rate or person_burst > burst:
        raise ClientDefinitionError(f"plan {name}: a person's limits cannot exceed the key's")


def validate(definitions):
    """The definitions as the app and the package read them, or ClientDefinitionError."""
    plans, clients = definitions.get("plans") or {}, definitions.get("clients") or {}
    for name, plan in plans.items():
        _check_limits(name, plan)
    for name, client in clients.items():
        if not CLIENT_NAME.match(name):
            raise ClientDefinitionError(f"client name {name!r}: lower-case letters, digits and '-', at most 40")
        if client.get("plan") not in plans:
            raise ClientDefinitionError(f"client {name}: unknown plan {client.get('plan')!r}")
        keys, revoked = client.get("keys", []), client.get("revoked", [])
        generations = keys + revoked
        if not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in generations):
            raise ClientDefinitionError(f"client {name}: key generations are positive integers")
        if len(set(generations)) != len(generations):
            raise ClientDefinitionError(f"client {name}: a generation is listed twice (live and revoked?)")
    return definitions


class ClientRegistry:
    def __init__(self, definitions):
        validate(definitions)
        self.plans = definitions["plans"]
        self.clients = definitions.get("clients", {})

    def caller(self, key_id, client):
        plan = self.clients[client]["plan"]
        return Caller(key_id=key_id, client=client, plan=plan, admin=bool(self.plans[plan].get("admin")),
                      trusted=bool(self.plans[plan].get("trusted_server")),
                      per_person=PERSON_LIMITS[0] in self.plans[plan])

    def live_keys(self):
        """(client, generation) of every key that may call."""
        return [(name, g) for name, c in self.clients.items() for g in sorted(c.get("keys", []))]

    @functools.cached_property
    def _local_keys(self):
        return {LOCAL_KEY.format(client=client, generation=g): self.caller(local_key_id(client, g), client)
                for client, g in self.live_keys()}

    def local_keys(self):
        """Local key value -> Caller (the local stage checks keys itself). Worked
        out once per registry: a new one is built when the definitions change."""
        return self._local_keys

    def cloud_caller(self, key_id, key_clients):
        """The Caller for an API Gateway key id; `key_clients` maps key id -> client
        (API_KEY_CLIENTS). A key API Gateway let through but the definitions do
        not know (made by hand) is a client of its own, rate-limited as standard
        and trusted with nothing."""
        client = key_clients.get(key_id)
        if client in self.clients:
            return self.caller(key_id, client)
        return Caller(key_id=key_id, client=f"key:{key_id}", plan="standard", admin=False, trusted=False)


def parse_key_clients(text):
    """API_KEY_CLIENTS ("<key id>=<client>,...") -> {key id: client}."""
    pairs = (item.split("=", 1) for item in (text or "").split(",") if "=" in item)
    return {key_id.strip(): client.strip() for key_id, client in pairs if key_id.strip()}
