"""API clients and their keys, from one definition (chalicelib/usage_plans.json).

    make clients                                  list clients, plans and local keys
    make clients ARGS="add mobile-app --plan standard"
    make clients ARGS="rotate storefront"         a new key; the old one keeps working
    make clients ARGS="revoke storefront --key 1" that key stops working
    make clients ARGS="revoke storefront"         every key of the client stops working
    ... --stage dev|prod                          and deploy the change (make deploy)

Locally the change takes effect at once (the app rereads the file). In AWS
the package turns each live key into an API Gateway key on its client's usage
plan: the deploy creates a rotated key, deletes a revoked one, and the stack
outputs name the key ids (`aws apigateway get-api-key --include-value`).
Commit the file: it is the record of who may call."""
import argparse
import json
import sys
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from chalicelib.domain.clients import CLIENT_NAME, LOCAL_KEY, ClientDefinitionError, validate  # noqa: E402
from chalicelib.settings import PLANS_FILE  # noqa: E402


def dump(definitions):
    """One line per plan and per client: diffs of the file read as who changed what."""
    def block(name, entries):
        rows = [f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in entries.items()]
        return f'  "{name}": {{\n' + ",\n".join(rows) + "\n  }"
    return "{\n" + block("plans", definitions["plans"]) + ",\n" + block("clients", definitions["clients"]) + "\n}\n"


def add(definitions, name, plan, description=""):
    if not CLIENT_NAME.match(name):
        raise ClientDefinitionError(f"client name {name!r}: lower-case letters, digits and '-', at most 40")
    if name in definitions["clients"]:
        raise ClientDefinitionError(f"client {name} exists (rotate or revoke its keys instead)")
    definitions["clients"][name] = {"plan": plan, "keys": [1], "revoked": [], "description": description}
    return validate(definitions)


def _client(definitions, name):
    if name not in definitions["clients"]:
        raise ClientDefinitionError(f"no client {name!r} (clients: {', '.join(definitions['clients'])})")
    return definitions["clients"][name]


def rotate(definitions, name):
    """A new key generation; the current ones stay valid until revoked."""
    client = _client(definitions, name)
    generation = max(client["keys"] + client["revoked"], default=0) + 1
    client["keys"].append(generation)
    validate(definitions)
    return generation


def revoke(definitions, name, generation=None):
    """Revoke one key generation, or all of the client's keys. Generations are never reused."""
    client = _client(definitions, name)
    targets = list(client["keys"]) if generation is None else [generation]
    for g in targets:
        if g not in client["keys"]:
            raise ClientDefinitionError(f"client {name} has no live key {g} (live: {client['keys']})")
        client["keys"].remove(g)
        client["revoked"].append(g)
    client["revoked"].sort()
    validate(definitions)
    return targets


def _limits(plan):
    text = f"{plan['rate_per_second']:g}/s burst {plan['burst']} per key"
    if "person_rate_per_second" in plan:
        text += f", {plan['person_rate_per_second']:g}/s burst {plan['person_burst']} per person"
    return text


def describe(definitions):
    lines = [f"plan {name:<9} {_limits(plan)}" for name, plan in definitions["plans"].items()]
    for name, client in definitions["clients"].items():
        keys = ", ".join(LOCAL_KEY.format(client=name, generation=g) for g in client["keys"]) or "(no live key)"
        lines.append(f"{name:<14} plan {client['plan']:<9} local keys: {keys}"
                     + (f"  revoked: {client['revoked']}" if client["revoked"] else ""))
    return "\n".join(lines)


def main(argv=None, path=PLANS_FILE):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="local", help="local (default) or a stage of infra/deploy.json to deploy")
    sub = parser.add_subparsers(dest="command")
    p_add = sub.add_parser("add")
    p_add.add_argument("name")
    p_add.add_argument("--plan", required=True)
    p_add.add_argument("--description", default="")
    p_rotate = sub.add_parser("rotate")
    p_rotate.add_argument("name")
    p_revoke = sub.add_parser("revoke")
    p_revoke.add_argument("name")
    p_revoke.add_argument("--key", type=int, default=None, help="one generation (default: all)")
    sub.add_parser("list")
    args = parser.parse_args(argv)
    definitions = json.loads(Path(path).read_text())
    try:
        if args.command == "add":
            add(definitions, args.name, args.plan, args.description)
            print(f"added {args.name}: local key {LOCAL_KEY.format(client=args.name, generation=1)}")
        elif args.command == "rotate":
            generation = rotate(definitions, args.name)
            print(f"{args.name}: new key generation {generation}: local key "
                  f"{LOCAL_KEY.format(client=args.name, generation=generation)}; revoke the old one when clients moved")
        elif args.command == "revoke":
            print(f"{args.name}: revoked key generation(s) {revoke(definitions, args.name, args.key)}")
        else:
            print(describe(definitions))
            return 0
    except ClientDefinitionError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    Path(path).write_text(dump(definitions))
    if args.stage != "local":
        from scripts import deploy

        return deploy.main(["--stage", args.stage])
    return 0


if __name__ == "__main__":
    sys.exit(main())
