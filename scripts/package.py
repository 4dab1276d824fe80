"""Build one deployable CloudFormation (SAM) template: the Chalice app plus infra/.

    .venv/bin/python scripts/package.py [--stage dev] [--out build]

Steps:
1. Load infra/template.yml and add the API keys, usage plans and usage plan
   keys generated from chalicelib/usage_plans.json (the same plan definitions
   the local stage enforces with its Redis token bucket): one usage plan per
   plan with Throttle RateLimit = rate_per_second, BurstLimit = burst (and an
   optional Quota), one API key per live key generation of each client, on
   its client's plan. Written to <out>/merge-template.json.
2. `chalice package --stage <stage> --merge-template <that file> <out>/package`.
3. Post-process the packaged template, because Chalice 1.34 cannot express it:
   - every SQS event source / event source mapping gets
     FunctionResponseTypes: [ReportBatchItemFailures], and its queue is the
     infra queue (GetAtt ...Arn), not an ARN built from a name;
   - the queues' VisibilityTimeout is raised to >= 6x the longest consumer timeout;
   - every function runs in the private subnets with the Lambda security group,
     active tracing, and the environment that points it at RDS Proxy, Redis (TLS),
     the queues and the database secret (DATABASE_SECRET_ARN; no credentials);
   - every function gets an IAM role of its own: LambdaBasePolicy plus the one
     infra policy FUNCTION_POLICIES names for it (a function missing there fails
     packaging), and Chalice's shared DefaultRole goes;
   - the serving functions connect as the app database user, the migrate
     function as the master (and creates the app user);
   - every API route except /health (and CORS preflight) requires an API key;
   - the connection budget: every function's ReservedConcurrentExecutions, each
     SQS mapping's ScalingConfig.MaximumConcurrency and each environment's pool
     size (DB_MAX_IN_FLIGHT) from the budget parameters of infra/template.yml
     (see connection_budget below), checked, and the parameters pinned;
   - every function on LAMBDA_RUNTIME; SnapStart on the API and the SQS
     consumers: each deploy publishes a version with the alias `live`, and API
     Gateway and the event source mappings call the alias (SnapStart applies
     to published versions only; $LATEST would start cold);
   Then it checks that no credential-looking value reached the template.
4. Slims deployment.zip (scripts/slim_package.py): nothing the runtime carries,
   bytecode for every module.
5. Writes <out>/sam.json (+ <out>/deployment.zip), ready for
   `aws cloudformation package` / `sam deploy`.
"""
import argparse
import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

PROJECT_DIR = Path(__file__).resolve().parent.parent
INFRA_TEMPLATE = PROJECT_DIR / "infra" / "template.yml"
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

from chalicelib.entrypoints.customer_tokens import CUSTOMER_PREFIX  # noqa: E402
from chalicelib.settings import QUEUES as QUEUE_TABLE  # noqa: E402
from scripts.slim_package import slim  # noqa: E402

PLANS_FILE = PROJECT_DIR / "chalicelib" / "usage_plans.json"

# Queue name used in `@app.on_sqs_message(queue=...)` -> infra logical id.
QUEUES = {q.default_name: q.logical_id for q in QUEUE_TABLE}
# Environment variable naming each queue -> infra logical id.
QUEUE_ENV = {q.setting: q.logical_id for q in QUEUE_TABLE}
VISIBILITY_FACTOR = 6
PUBLIC_PATHS = {"/health"}
API_RESOURCE = "RestAPI"  # Chalice's logical id of the REST API
BASE_POLICY = "LambdaBasePolicy"
# Packaged function (Chalice's logical id) -> its policy in infra/template.yml.
FUNCTION_POLICIES = {
    "APIHandler": "ApiAccessPolicy",
    "HandleOrderIngest": "OrderIngestAccessPolicy",
    "HandleCacheInvalidation": "CacheInvalidationAccessPolicy",
    "HandleFlashOrders": "FlashOrderAccessPolicy",
    "HandleOrderExpiry": "OrderExpiryAccessPolicy",
    "HandleNotifications": "NotificationAccessPolicy",
    "WarmCache": "WarmCacheAccessPolicy",
    "Migrate": "MigrateAccessPolicy",
    "Lifecycle": "LifecycleAccessPolicy",
    "FlashReconcile": "FlashReconcileAccessPolicy",
    "HandleRelatedProducts": "RelatedProductsAccessPolicy",
}
# The setting naming a topic (QueueDef.topic_setting) -> the topic in infra/template.yml.
TOPICS = {"ORDER_EVENTS_TOPIC_ARN": "OrderEventsTopic"}
MIGRATE_FUNCTION = "Migrate"
# Functions whose security groups add to LambdaSecurityGroup: the notifier calls SES's API,
# which has no VPC endpoint (infra/template.yml, MailerSecurityGroup).
EXTRA_SECURITY_GROUPS = {"HandleNotifications": ["MailerSecurityGroup"]}
# Every function's runtime. Chalice packages for the interpreter it runs under,
# so make's venv is made with this Python (the Makefile's RUNTIME_VERSION).
LAMBDA_RUNTIME = "python3.12"
SNAPSTART_ALIAS = "live"
SAM_TRANSFORM = "AWS::Serverless-2016-10-31"
# Lambda sets these itself and refuses a function that sets them.
RESERVED_ENV = {"_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
                "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
                "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
                "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR"}


# ------------------------------------------------------------------ YAML
class _CfnLoader(yaml.SafeLoader):
    """SafeLoader that understands CloudFormation short-form tags (!Ref, !Sub, ...)."""


def _cfn_tag(loader, tag_suffix, node):
    name = tag_suffix
    key = "Ref" if name == "Ref" else f"Fn::{name}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
        if name == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {key: value}


_CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template(path):
    text = Path(path).read_text()
    if str(path).endswith(".json"):
        return json.loads(text)
    return yaml.load(text, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


# ------------------------------------------------------------------ plans
def load_plans(path=PLANS_FILE):
    return json.loads(Path(path).read_text())


def logical_suffix(name):
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part)


def usage_plan_definitions(plans):
    """Plain data per plan (shared by the template generator and the local deploy test)."""
    out = []
    for name, plan in plans["plans"].items():
        rate, burst = plan["rate_per_second"], plan["burst"]
        if rate <= 0 or burst < 1:
            raise ValueError(f"plan {name}: rate_per_second must be > 0 and burst >= 1")
        definition = {
            "plan": name,
            "suffix": logical_suffix(name),
            "admin": bool(plan.get("admin")),
            "throttle": {"RateLimit": float(rate), "BurstLimit": int(burst)},
            # API Gateway keeps only the key's limits; the app keeps each person's (adapters/ratelimit.py).
            "person": (f"; per person in the app: {plan['person_rate_per_second']:g} requests/s, burst "
                       f"{plan['person_burst']}" if "person_rate_per_second" in plan else ""),
        }
        if plan.get("quota"):
            definition["quota"] = {"Limit": int(plan["quota"]["limit"]), "Period": plan["quota"].get("period", "DAY")}
        out.append(definition)
    return out


def client_keys(plans):
    """(logical id, client, generation, plan) of every live client key (chalicelib/domain/clients.py)."""
    from chalicelib.domain.clients import ClientRegistry

    registry = ClientRegistry(plans)
    return [(f"ApiKey{logical_suffix(client)}G{generation}", client, generation, registry.clients[client]["plan"])
            for client, generation in registry.live_keys()]


def api_gateway_resources(plans, api_resource=API_RESOURCE):
    """CloudFormation resources: per plan a usage plan on the API's stage; per
    live client key generation an API key linked to its client's plan. A
    rotation adds a generation (a new key, the old one still valid); a
    revocation removes one (CloudFormation deletes that key)."""
    resources = {}
    for d in usage_plan_definitions(plans):
        suffix = d["suffix"]
        plan_props = {
            "UsagePlanName": {"Fn::Sub": "${ServiceName}-${Stage}-" + d["plan"]},
            "Description": f"{d['plan']}: {d['throttle']['RateLimit']:g} requests/s, burst {d['throttle']['BurstLimit']}"
                           f"{d['person']} (chalicelib/usage_plans.json)",
            "Throttle": dict(d["throttle"]),
            "ApiStages": [{"ApiId": {"Ref": api_resource}, "Stage": {"Ref": f"{api_resource}.Stage"}}],
        }
        if "quota" in d:
            plan_props["Quota"] = dict(d["quota"])
        resources[f"UsagePlan{suffix}"] = {"Type": "AWS::ApiGateway::UsagePlan", "Properties": plan_props}
    for key_id, client, generation, plan in client_keys(plans):
        resources[key_id] = {
            "Type": "AWS::ApiGateway::ApiKey",
            "Properties": {
                "Name": {"Fn::Sub": "${ServiceName}-${Stage}-" + f"{client}-{generation}"},
                "Description": f"shop API key of client {client}, generation {generation}, plan {plan} "
                               "(value generated by API Gateway)",
                "Enabled": True,
            },
        }
        resources[f"UsagePlanKey{key_id[len('ApiKey'):]}"] = {
            "Type": "AWS::ApiGateway::UsagePlanKey",
            "Properties": {"KeyId": {"Ref": key_id}, "KeyType": "API_KEY",
                           "UsagePlanId": {"Ref": f"UsagePlan{logical_suffix(plan)}"}},
        }
    return resources


# API Gateway answers some requests itself (no key, throttled, too large, no
# route); these make those answers the contract's error body with the request id.
# (response type, status or None to keep API Gateway's, error code, message or None
# for API Gateway's own, extra headers)
GATEWAY_RESPONSES = (
    ("ACCESS_DENIED", "403", "FORBIDDEN", "A valid x-api-key header is required.", {}),
    # The Cognito authorizer of the /customer routes: no, expired or foreign token.
    ("UNAUTHORIZED", "401", "UNAUTHORIZED", "A valid customer token is required: 'Authorization: Bearer <ID token>'.",
     {}),
    ("INVALID_API_KEY", "403", "FORBIDDEN", "A valid x-api-key header is required.", {}),
    ("MISSING_AUTHENTICATION_TOKEN", "403", "FORBIDDEN",
     "No such route, or a valid x-api-key header is required.", {}),
    ("THROTTLED", "429", "RATE_LIMITED", "Too many requests for this API key.", {"Retry-After": "1"}),
    ("QUOTA_EXCEEDED", "429", "RATE_LIMITED", "This API key's quota is used up.", {"Retry-After": "3600"}),
    ("REQUEST_TOO_LARGE", "413", "PAYLOAD_TOO_LARGE", "The request body is too large.", {}),
    ("UNSUPPORTED_MEDIA_TYPE", "415", "UNSUPPORTED_MEDIA_TYPE", None, {}),
    # Lambda refusing an invocation past the function's reserved concurrency (the
    # connection budget) reaches API Gateway as an integration failure: retryable.
    ("INTEGRATION_FAILURE", "503", "SERVICE_UNAVAILABLE", "The service is at capacity; retry shortly.",
     {"Retry-After": "1"}),
    ("DEFAULT_4XX", None, "VALIDATION_ERROR", None, {}),
    ("DEFAULT_5XX", None, "SERVICE_UNAVAILABLE", None, {"Retry-After": "2"}),
)


def gateway_responses(api_resource=API_RESOURCE):
    resources = {}
    for response_type, status, code, message, headers in GATEWAY_RESPONSES:
        text = json.dumps(message) if message else "$context.error.messageString"
        props = {
            "RestApiId": {"Ref": api_resource},
            "ResponseType": response_type,
            "ResponseParameters": {
                "gatewayresponse.header.Content-Type": "'application/json'",
                "gatewayresponse.header.X-Request-Id": "context.requestId",
                **{f"gatewayresponse.header.{name}": f"'{value}'" for name, value in headers.items()},
            },
            "ResponseTemplates": {"application/json": (
                '{"error": {"code": "%s", "message": %s, "request_id": "$context.requestId"}}' % (code, text))},
        }
        if status:
            props["StatusCode"] = status
        name = "GatewayResponse" + "".join(part.title() for part in response_type.split("_"))
        resources[name] = {"Type": "AWS::ApiGateway::GatewayResponse", "Properties": props}
    return resources


def key_clients(plans):
    """API_KEY_CLIENTS for the functions: "<key id>=<client>,..." from the generated keys."""
    pairs = [{"Fn::Join": ["=", [{"Ref": key_id}, client]]} for key_id, client, _, _ in client_keys(plans)]
    return {"Fn::Join": [",", pairs]} if pairs else ""


def topic_subscriptions(queue_table=QUEUE_TABLE):
    """Per queue that QueueDef subscribes to a topic (topic_setting): the
    subscription (raw message delivery, the filter policy on `event_type`) and
    the queue policy that lets that topic, and only it, send to the queue."""
    resources = {}
    for q in queue_table:
        if not q.topic_setting:
            continue
        if q.topic_setting not in TOPICS:
            raise SystemExit(f"{q.logical_id}: no infra topic for {q.topic_setting}; add it to TOPICS in "
                             "scripts/package.py")
        topic = {"Ref": TOPICS[q.topic_setting]}
        subscription = {"TopicArn": topic, "Protocol": "sqs", "Endpoint": {"Fn::GetAtt": [q.logical_id, "Arn"]},
                        "RawMessageDelivery": True}
        if q.event_types:
            subscription.update({"FilterPolicyScope": "MessageAttributes",
                                 "FilterPolicy": {"event_type": list(q.event_types)}})
        resources[f"{q.logical_id}Subscription"] = {"Type": "AWS::SNS::Subscription", "Properties": subscription}
        resources[f"{q.logical_id}TopicPolicy"] = {"Type": "AWS::SQS::QueuePolicy", "Properties": {
            "Queues": [{"Ref": q.logical_id}],
            "PolicyDocument": {"Version": "2012-10-17", "Statement": [{
                "Sid": "TopicSendsHere", "Effect": "Allow", "Principal": {"Service": "sns.amazonaws.com"},
                "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": [q.logical_id, "Arn"]},
                "Condition": {"ArnEquals": {"aws:SourceArn": topic}}}]}}}
    return resources


WEB_ACL = "ApiWebAcl"  # infra/template.yml's rate rules at the edge


def web_acl_association(api_resource=API_RESOURCE):
    """The edge's rate rules (infra/template.yml's WebACL) in front of the API's stage; generated here because
    the REST API and its stage exist only in Chalice's part of the template."""
    stage_arn = {"Fn::Join": ["", ["arn:", {"Ref": "AWS::Partition"}, ":apigateway:", {"Ref": "AWS::Region"},
                                   "::/restapis/", {"Ref": api_resource}, "/stages/",
                                   {"Ref": f"{api_resource}.Stage"}]]}
    return {f"{WEB_ACL}Association": {"Type": "AWS::WAFv2::WebACLAssociation", "Properties": {
        "ResourceArn": stage_arn, "WebACLArn": {"Fn::GetAtt": [WEB_ACL, "Arn"]}}}}


def build_merge_template(infra_path=INFRA_TEMPLATE, plans=None, with_api=True):
    """infra/ plus the generated API Gateway resources and topic subscriptions: what `--merge-template` gets."""
    template = load_template(infra_path)
    # Chalice's merge would replace its own SAM transform; postprocess lists both.
    template.pop("Transform", None)
    template["Resources"].update(topic_subscriptions())
    if with_api:
        plans = plans or load_plans()
        template["Resources"].update(api_gateway_resources(plans))
        template["Resources"].update(gateway_responses())
        template["Resources"].update(web_acl_association())
        outputs = template.setdefault("Outputs", {})
        for key_id, client, generation, plan in client_keys(plans):
            outputs[f"{key_id}Id"] = {"Description": f"API key id of client {client} (generation {generation}, "
                                                     f"plan {plan}; value: aws apigateway get-api-key --include-value)",
                                      "Value": {"Ref": key_id}}
    return template


# ------------------------------------------------------------------ post-processing
def redis_url(group):
    """TLS (transit encryption is on) to a replication group's primary, or with cluster mode
    (IsRedisCluster) to its configuration endpoint as a Redis Cluster (chalicelib/adapters/cache.py)."""
    return {"Fn::If": ["IsRedisCluster",
                       {"Fn::Sub": f"rediss+cluster://${{{group}.ConfigurationEndPoint.Address}}:"
                                   f"${{{group}.ConfigurationEndPoint.Port}}/0"},
                       {"Fn::Sub": f"rediss://${{{group}.PrimaryEndPoint.Address}}:${{{group}.PrimaryEndPoint.Port}}/0"}]}


def function_environment(plans, logical_id=None):
    if logical_id == MIGRATE_FUNCTION:
        secrets = {"DATABASE_SECRET_ARN": {"Ref": "DatabaseSecret"},
                   "APP_DATABASE_SECRET_ARN": {"Ref": "AppDatabaseSecret"}}
    else:
        secrets = {"DATABASE_SECRET_ARN": {"Ref": "AppDatabaseSecret"}}
    return {
        **secrets,
        "DATABASE_HOST": {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]},
        "DATABASE_PORT": "3306",
        "DATABASE_NAME": {"Ref": "DatabaseName"},
        "DATABASE_TLS": "true",
        "DATABASE_READER_URL": {"Fn::If": ["HasReader", {"Fn::Sub": "mysql://${DatabaseReaderHost}:3306/${DatabaseName}"},
                                           ""]},
        "REDIS_URL": redis_url("Redis"),
        "REDIS_STATE_URL": redis_url("RedisState"),
        # Only the API and the warmer may read it (their policies); the others never sign a cursor.
        "CURSOR_SECRET_ARN": {"Ref": "CursorSecret"},
        **{setting: {"Fn::GetAtt": [logical_id, "QueueName"]} for setting, logical_id in QUEUE_ENV.items()},
        "AWS_ENDPOINT_URL": "",  # real AWS endpoints in the cloud
        "APP_API_KEYS": "false",  # API Gateway checks keys in the cloud
        "API_KEY_CLIENTS": key_clients(plans),
        # API Gateway's Cognito authorizer verifies customer tokens; the app reads its claims.
        "APP_VERIFY_TOKENS": "false",
        **{setting: {"Ref": topic} for setting, topic in TOPICS.items()},
        "ORDER_PAYMENT_WINDOW_SECONDS": {"Ref": "OrderPaymentWindowSeconds"},
        "COGNITO_USER_POOL_ID": {"Ref": "CustomerUserPool"},
        "COGNITO_APP_CLIENT_IDS": {"Ref": "CustomerUserPoolClient"},
        "NOTIFY_FROM_EMAIL": {"Ref": "NotifyFromEmail"},
        "OPERATOR_EMAIL": {"Ref": "OperatorEmail"},
        "POWERTOOLS_METRICS_NAMESPACE": "Shop",
    }


def _queue_logical_id(queue, template, queue_names=None):
    """The infra queue an SQS event source points at, or None."""
    queue_names = queue_names or QUEUES
    if isinstance(queue, dict) and "Fn::GetAtt" in queue:
        return queue["Fn::GetAtt"][0]
    text = queue.get("Fn::Sub") if isinstance(queue, dict) else queue
    if isinstance(text, str):
        name = text.rsplit(":", 1)[-1]
        if name in queue_names:
            return queue_names[name]
        if name in template["Resources"] and template["Resources"][name]["Type"] == "AWS::SQS::Queue":
            return name
    return None


def _consumer_timeouts(template):
    timeouts = []
    for res in template["Resources"].values():
        if res["Type"] == "AWS::Serverless::Function":
            events = res["Properties"].get("Events") or {}
            if any(e.get("Type") == "SQS" for e in events.values()):
                timeouts.append(int(res["Properties"].get("Timeout", 3)))
    return timeouts


def function_role(policy):
    return {
        "Type": "AWS::IAM::Role",
        "Properties": {
            "AssumeRolePolicyDocument": {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]},
            "ManagedPolicyArns": [{"Ref": BASE_POLICY}, {"Ref": policy}],
        },
    }


def give_each_function_its_role(template):
    """One role per function (FUNCTION_POLICIES), replacing the roles Chalice made."""
    resources = template["Resources"]
    replaced = set()
    for logical_id, res in list(resources.items()):
        if res["Type"] != "AWS::Serverless::Function":
            continue
        policy = FUNCTION_POLICIES.get(logical_id)
        if policy is None:
            raise SystemExit(f"{logical_id}: no IAM policy for this function; add it to FUNCTION_POLICIES in "
                             "scripts/package.py and its policy to infra/template.yml")
        role = res["Properties"].get("Role")
        if isinstance(role, dict) and "Fn::GetAtt" in role:
            replaced.add(role["Fn::GetAtt"][0])
        resources[f"{logical_id}Role"] = function_role(policy)
        res["Properties"]["Role"] = {"Fn::GetAtt": [f"{logical_id}Role", "Arn"]}
    still_used = json.dumps({k: v for k, v in resources.items() if k not in replaced})
    for role_id in replaced:
        if f'"{role_id}"' not in still_used:
            del resources[role_id]


def alias_logical_id(function):
    """The AWS::Lambda::Alias SAM makes for AutoPublishAlias (its naming; cfn-lint's
    transform fails the template if it ever differs)."""
    return f"{function}Alias{SNAPSTART_ALIAS}"


def snapstart(template):
    """SnapStart for the functions whose cold starts callers wait on: the API and
    the SQS consumers. SAM publishes a version per code change and points the
    alias at it; the SQS mappings of an aliased function call the alias, and
    the API's integrations and invoke permission are moved to it here."""
    resources = template["Resources"]
    snapped = []
    for logical_id, props in _functions(template).items():
        sqs = any(e.get("Type") == "SQS" for e in (props.get("Events") or {}).values())
        if logical_id == API_FUNCTION or sqs:
            props["AutoPublishAlias"] = SNAPSTART_ALIAS
            props["SnapStart"] = {"ApplyOn": "PublishedVersions"}
            snapped.append(logical_id)
    api = resources.get(API_RESOURCE)
    if API_FUNCTION in snapped and api is not None:
        for methods in api["Properties"]["DefinitionBody"].get("paths", {}).values():
            for operation in methods.values():
                uri = (operation.get("x-amazon-apigateway-integration") or {}).get("uri") \
                    if isinstance(operation, dict) else None
                if isinstance(uri, dict) and "Fn::Sub" in uri:
                    # An alias's Ref is its ARN: the integration invokes the published version.
                    uri["Fn::Sub"] = uri["Fn::Sub"].replace(f"${{{API_FUNCTION}.Arn}}",
                                                            f"${{{alias_logical_id(API_FUNCTION)}}}")
        for res in resources.values():
            props = res.get("Properties") or {}
            if res["Type"] == "AWS::Lambda::Permission" and props.get("FunctionName") == {"Ref": API_FUNCTION}:
                props["FunctionName"] = {"Ref": alias_logical_id(API_FUNCTION)}
    return [f"SnapStart on {', '.join(sorted(snapped))} (alias {SNAPSTART_ALIAS})"] if snapped else []


def check_runtime(template):
    runtimes = {name: props.get("Runtime") for name, props in _functions(template).items()}
    wrong = {name: runtime for name, runtime in runtimes.items() if runtime != LAMBDA_RUNTIME}
    if wrong:
        raise SystemExit(f"functions not on {LAMBDA_RUNTIME}: {wrong} (chalice packages for the Python it runs "
                         f"under: package with {LAMBDA_RUNTIME}, as make's venv does)")


def postprocess(template, plans, api_stage=None, queue_names=None, infra=INFRA_TEMPLATE,
                budget_overrides=None):
    """Mutate the packaged template in place; returns a list of notes (what was changed)."""
    notes = []
    resources = template["Resources"]
    template["Transform"] = [SAM_TRANSFORM] + [t for t in _infra_transforms(infra) if t != SAM_TRANSFORM]
    give_each_function_its_role(template)

    for logical_id, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            for event_id, event in (props.get("Events") or {}).items():
                if event.get("Type") != "SQS":
                    continue
                ep = event["Properties"]
                queue_id = _queue_logical_id(ep["Queue"], template, queue_names)
                if queue_id is None:
                    raise SystemExit(f"{logical_id}.{event_id}: SQS queue {ep['Queue']!r} is not an infra queue "
                                     f"(known: {sorted(queue_names or QUEUES)})")
                ep["Queue"] = {"Fn::GetAtt": [queue_id, "Arn"]}
                ep["FunctionResponseTypes"] = ["ReportBatchItemFailures"]
                notes.append(f"{logical_id}: SQS {queue_id} with ReportBatchItemFailures")
            props["VpcConfig"] = {
                "SubnetIds": [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}],
                "SecurityGroupIds": [{"Ref": group} for group in
                                     ["LambdaSecurityGroup", *EXTRA_SECURITY_GROUPS.get(logical_id, [])]],
            }
            props["Tracing"] = "Active"
            variables = props.setdefault("Environment", {}).setdefault("Variables", {})
            variables.pop("DATABASE_URL", None)
            for name in sorted(RESERVED_ENV & set(variables)):
                del variables[name]
                notes.append(f"WARNING {logical_id}: dropped reserved Lambda variable {name} "
                             "(set by Lambda; move it to the local stage in .chalice/config.json)")
            variables.update(copy.deepcopy(function_environment(plans, logical_id)))
        elif res["Type"] == "AWS::Lambda::EventSourceMapping":
            source = json.dumps(props.get("EventSourceArn"))
            if ":sqs:" in source or "Queue" in source:
                props["FunctionResponseTypes"] = ["ReportBatchItemFailures"]
                notes.append(f"{logical_id}: event source mapping with ReportBatchItemFailures")

    timeouts = _consumer_timeouts(template)
    params = template.setdefault("Parameters", {})
    if timeouts:
        needed = VISIBILITY_FACTOR * max(timeouts)
        current = int(params["QueueVisibilityTimeout"]["Default"])
        params["QueueVisibilityTimeout"]["Default"] = max(current, needed)
        params["QueueVisibilityTimeout"]["MinValue"] = max(int(params["QueueVisibilityTimeout"].get("MinValue", 0)),
                                                           needed)
    if api_stage:
        params["Stage"]["Default"] = api_stage
    notes.extend(apply_connection_budget(template, budget_overrides))
    notes.extend(snapstart(template))

    api = resources.get(API_RESOURCE)
    if api is not None:
        body = api["Properties"]["DefinitionBody"]
        definitions = body.setdefault("securityDefinitions", {})
        definitions["api_key"] = {"type": "apiKey", "name": "x-api-key", "in": "header"}
        definitions["customers"] = {
            "type": "apiKey", "name": "Authorization", "in": "header",
            "x-amazon-apigateway-authtype": "cognito_user_pools",
            "x-amazon-apigateway-authorizer": {"type": "cognito_user_pools",
                                               "providerARNs": [{"Fn::GetAtt": ["CustomerUserPool", "Arn"]}]},
        }
        for path, methods in body.get("paths", {}).items():
            for method, operation in methods.items():
                if not isinstance(operation, dict) or method.startswith("x-"):
                    continue
                if path in PUBLIC_PATHS or method == "options":
                    if operation.pop("security", None):
                        notes.append(f"WARNING {method.upper()} {path}: API key requirement removed (public route)")
                elif {"api_key": []} not in (operation.get("security") or []):
                    operation.setdefault("security", []).append({"api_key": []})
                    notes.append(f"WARNING {method.upper()} {path}: had no api_key_required; added")
                if path.startswith(CUSTOMER_PREFIX) and method != "options":
                    # One requirement object: the key AND the token.
                    operation["security"] = [{"api_key": [], "customers": []}]
    check_no_credentials(template)
    return notes


def _infra_transforms(infra_path=INFRA_TEMPLATE):
    transform = load_template(infra_path).get("Transform") or []
    return [transform] if isinstance(transform, str) else list(transform)


# ------------------------------------------------------------------ connection budget
# Each Lambda execution environment holds its own MySQL pool, and RDS Proxy opens
# at most MaxConnectionsPercent of the instance's max_connections. So the fleet
# stays within what the database can take when
#   sum over functions (reserved concurrency) x DatabaseConnectionsPerEnvironment
#     <= floor(DatabaseMaxConnections x DatabaseProxyMaxConnectionsPercent / 100)
# The inputs are template parameters; the shares are worked out here because
# CloudFormation has no arithmetic.
BUDGET_PARAMETERS = ("DatabaseMaxConnections", "DatabaseProxyMaxConnectionsPercent",
                     "DatabaseConnectionsPerEnvironment", "OrderIngestConnectionPercent",
                     "CacheInvalidationConcurrency", "FlashOrderConcurrency", "OrderExpiryConcurrency",
                     "RelatedProductsConcurrency", "NotificationConcurrency")
API_FUNCTION = "APIHandler"  # gets what the others leave
# A 10-minute schedule; a deploy step; the outbox relay, which must be alone to publish in order.
SINGLE_ENVIRONMENT = {"WarmCache", "Migrate", "Lifecycle", "FlashReconcile"}
SQS_MAX_CONCURRENCY = (2, 1000)  # what an SQS event source mapping accepts


def budget_inputs(template, overrides=None):
    params = template.get("Parameters", {})
    missing = [name for name in BUDGET_PARAMETERS if name not in params and name not in (overrides or {})]
    if missing:
        raise SystemExit(f"connection budget: template parameters missing: {missing}")
    values = {name: int(params[name]["Default"]) for name in BUDGET_PARAMETERS if name in params}
    values.update({name: int(value) for name, value in (overrides or {}).items()})
    unknown = sorted(set(values) - set(BUDGET_PARAMETERS))
    if unknown:
        raise SystemExit(f"connection budget: unknown inputs {unknown} (known: {list(BUDGET_PARAMETERS)})")
    return values


def connection_budget(inputs):
    """(connections RDS Proxy may open, execution environments that fit in them)."""
    connections = inputs["DatabaseMaxConnections"] * inputs["DatabaseProxyMaxConnectionsPercent"] // 100
    return connections, connections // inputs["DatabaseConnectionsPerEnvironment"]


def _functions(template):
    return {k: r["Properties"] for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def _sqs_mappings(template):
    """(function, queue, the mapping's properties) for every SQS mapping onto a function of this template."""
    resources = template["Resources"]
    for logical_id, res in resources.items():
        props = res.get("Properties", {})
        if res["Type"] == "AWS::Serverless::Function":
            for event in (props.get("Events") or {}).values():
                if event.get("Type") == "SQS":
                    yield logical_id, _queue_logical_id(event["Properties"]["Queue"], template), event["Properties"]
        elif res["Type"] == "AWS::Lambda::EventSourceMapping":
            function = props.get("FunctionName")
            function = function.get("Ref") if isinstance(function, dict) else function
            queue = _queue_logical_id(props.get("EventSourceArn"), template)
            if queue and resources.get(function, {}).get("Type") == "AWS::Serverless::Function":
                yield function, queue, props


def allocate_concurrency(template, inputs):
    """Reserved concurrency per function: each consumer its share, the one-off
    functions one environment, the API what is left. A reserved concurrency the
    Chalice config already set is kept and counts against the budget."""
    functions = _functions(template)
    _, environments = connection_budget(inputs)
    shares = {"OrderIngestQueue": environments * inputs["OrderIngestConnectionPercent"] // 100,
              "CacheInvalidationQueue": inputs["CacheInvalidationConcurrency"],
              "FlashOrderQueue": inputs["FlashOrderConcurrency"],
              "OrderExpiryQueue": inputs["OrderExpiryConcurrency"],
              "RelatedProductsQueue": inputs["RelatedProductsConcurrency"],
              "NotificationQueue": inputs["NotificationConcurrency"]}
    allocation = {name: props["ReservedConcurrentExecutions"] for name, props in functions.items()
                  if "ReservedConcurrentExecutions" in props}
    for function, queue, _ in _sqs_mappings(template):
        if function not in allocation:
            if queue not in shares:
                raise SystemExit(f"connection budget: no share for {function}, the consumer of {queue}")
            allocation[function] = shares[queue]
    for name in functions:
        if name in SINGLE_ENVIRONMENT and name not in allocation:
            allocation[name] = 1
    rest = sorted(set(functions) - set(allocation) - {API_FUNCTION})
    if rest:
        raise SystemExit(f"connection budget: no share for {rest}; a function without reserved concurrency "
                         "could scale past the budget (add it to scripts/package.py's allocation)")
    if API_FUNCTION in functions and API_FUNCTION not in allocation:
        allocation[API_FUNCTION] = environments - sum(allocation.values())
    return allocation


def check_connection_budget(template, inputs):
    """Fail unless the packaged numbers obey the formula; returns the connections the fleet can open."""
    connections, _ = connection_budget(inputs)
    per_environment = inputs["DatabaseConnectionsPerEnvironment"]
    functions = _functions(template)
    problems = []
    for name, props in functions.items():
        reserved = props.get("ReservedConcurrentExecutions")
        if not isinstance(reserved, int) or reserved < 1:
            problems.append(f"{name}: ReservedConcurrentExecutions {reserved!r} (needs a number >= 1)")
        pool = (props.get("Environment") or {}).get("Variables", {}).get("DB_MAX_IN_FLIGHT")
        if pool != str(per_environment):
            problems.append(f"{name}: DB_MAX_IN_FLIGHT {pool!r}, the budget assumes {per_environment}")
    for function, queue, props in _sqs_mappings(template):
        maximum = (props.get("ScalingConfig") or {}).get("MaximumConcurrency")
        reserved = (functions.get(function) or {}).get("ReservedConcurrentExecutions")
        low, high = SQS_MAX_CONCURRENCY
        if not isinstance(maximum, int) or not low <= maximum <= high:
            problems.append(f"{function} <- {queue}: MaximumConcurrency {maximum!r} (needs {low}..{high})")
        elif isinstance(reserved, int) and maximum > reserved:
            # Lambda would throttle the mapping's invocations; each throttle is a receive towards the DLQ.
            problems.append(f"{function} <- {queue}: MaximumConcurrency {maximum} above reserved concurrency "
                            f"{reserved}")
    fleet = sum(p.get("ReservedConcurrentExecutions") or 0 for p in functions.values()) * per_environment
    if fleet > connections:
        problems.append(f"the fleet can open {fleet} MySQL connections, the budget is {connections} "
                        f"({inputs['DatabaseMaxConnections']} x {inputs['DatabaseProxyMaxConnectionsPercent']}%)")
    if problems:
        raise SystemExit("connection budget exceeded or incomplete:\n  " + "\n  ".join(problems))
    return fleet


def apply_connection_budget(template, overrides=None):
    """Write the budget into the packaged template; returns notes."""
    inputs = budget_inputs(template, overrides)
    allocation = allocate_concurrency(template, inputs)
    for name, reserved in allocation.items():
        props = template["Resources"][name]["Properties"]
        props["ReservedConcurrentExecutions"] = reserved
        props.setdefault("Environment", {}).setdefault("Variables", {})["DB_MAX_IN_FLIGHT"] = \
            str(inputs["DatabaseConnectionsPerEnvironment"])
    for function, _, props in _sqs_mappings(template):
        if function in allocation:
            props["ScalingConfig"] = {"MaximumConcurrency": min(allocation[function], SQS_MAX_CONCURRENCY[1])}
    fleet = check_connection_budget(template, inputs)
    # The numbers above follow from these values: a deploy-time override would leave them behind.
    params = template["Parameters"]
    for name, value in inputs.items():
        params[name].update({"Default": value, "MinValue": value, "MaxValue": value})
        params[name].pop("AllowedValues", None)
    connections, _ = connection_budget(inputs)
    shares = ", ".join(f"{name} {n}" for name, n in sorted(allocation.items()))
    template.setdefault("Outputs", {})["ConnectionBudget"] = {
        "Description": "Reserved concurrency per function and the MySQL connections the fleet can open",
        "Value": f"{shares}; at most {fleet} connections of {connections} ({inputs['DatabaseMaxConnections']} "
                 f"max_connections x {inputs['DatabaseProxyMaxConnectionsPercent']}%)",
    }
    return [f"connection budget: {shares}; the fleet opens at most {fleet} of {connections} connections"]


_SECRET_NAMES = re.compile(r"(PASSWORD|SECRET_ACCESS_KEY|ACCESS_KEY_ID|AUTH_TOKEN|PRIVATE_KEY)$", re.I)
_URL_WITH_PASSWORD = re.compile(r"^[a-z+]+://[^/@\s:]*:[^/@\s]+@")


def check_no_credentials(template):
    """Fail if a function environment or any string carries a credential."""
    for logical_id, res in template["Resources"].items():
        variables = ((res.get("Properties") or {}).get("Environment") or {}).get("Variables") or {}
        for name, value in variables.items():
            if _SECRET_NAMES.search(name):
                raise SystemExit(f"{logical_id}: environment variable {name} looks like a credential")
            if isinstance(value, str) and _URL_WITH_PASSWORD.match(value):
                raise SystemExit(f"{logical_id}: {name} embeds a password")

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str) and _URL_WITH_PASSWORD.match(node):
            raise SystemExit(f"{where} embeds a password")

    walk(template, "template")


# ------------------------------------------------------------------ driver
def api_stage_name(project_dir, stage):
    config = json.loads((Path(project_dir) / ".chalice" / "config.json").read_text())
    return config.get("stages", {}).get(stage, {}).get("api_gateway_stage") or config.get("api_gateway_stage") or "api"


def _settings_names(project_dir):
    """Names chalicelib.settings lets the process environment override."""
    path = Path(project_dir) / "chalicelib" / "settings.py"
    if not path.exists():
        return set()
    spec = importlib.util.spec_from_file_location("_shop_settings_for_package", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return set(getattr(module, "DEFAULTS", {}))


def stage_queue_names(project_dir, stage):
    """Queue names the app uses in `stage` (config file values), -> infra logical id."""
    config_path = Path(project_dir) / ".chalice" / "config.json"
    names = dict(QUEUES)
    if config_path.exists():
        config = json.loads(config_path.read_text())
        values = dict(config.get("environment_variables", {}))
        values.update(config.get("stages", {}).get(stage, {}).get("environment_variables", {}))
        for env_name, logical_id in QUEUE_ENV.items():
            if values.get(env_name):
                names[values[env_name]] = logical_id
    return names


def run_chalice_package(project_dir, stage, merge_template, outdir):
    # The app is imported while packaging (queue names in decorators may come from
    # settings), so it must see the stage's configuration, not this shell's
    # local/test overrides such as ORDER_QUEUE_NAME=test-...
    drop = _settings_names(project_dir)
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("SHOP_")}
    env["STAGE"] = stage
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    cmd = [sys.executable, "-c", "import sys; from chalice.cli import main; sys.exit(main())",
           "--project-dir", str(project_dir), "package", "--stage", stage,
           "--merge-template", str(merge_template), str(outdir)]
    subprocess.run(cmd, check=True, env=env)


def package(stage="dev", out="build", project_dir=PROJECT_DIR, infra=INFRA_TEMPLATE, plans_file=PLANS_FILE,
            quiet=False, budget=None):
    project_dir = Path(project_dir).resolve()
    out = Path(out)
    if not out.is_absolute():
        out = project_dir / out
    out.mkdir(parents=True, exist_ok=True)
    plans = load_plans(plans_file)
    merge_path = out / "merge-template.json"
    merge_path.write_text(json.dumps(build_merge_template(infra, plans), indent=2))
    chalice_out = out / "package"
    if chalice_out.exists():
        shutil.rmtree(chalice_out)
    run_chalice_package(project_dir, stage, merge_path, chalice_out)
    template = json.loads((chalice_out / "sam.json").read_text())
    check_runtime(template)
    notes = postprocess(template, plans, api_stage=api_stage_name(project_dir, stage),
                        queue_names=stage_queue_names(project_dir, stage), infra=infra,
                        budget_overrides=budget)
    result = out / "sam.json"
    result.write_text(json.dumps(template, indent=2))
    shutil.copy(chalice_out / "deployment.zip", out / "deployment.zip")
    dropped, compiled = slim(out / "deployment.zip", LAMBDA_RUNTIME[len("python"):])
    notes.append(f"deployment.zip: {dropped} files the runtime carries left out, {compiled} modules compiled")
    if not quiet:
        for note in notes:
            print(note)
        print(f"wrote {result} and {out / 'deployment.zip'}")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", default="dev")
    parser.add_argument("--out", default="build")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR))
    parser.add_argument("--infra", default=str(INFRA_TEMPLATE))
    parser.add_argument("--plans", default=str(PLANS_FILE))
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                        help="a connection budget input instead of the template's default: "
                             + ", ".join(BUDGET_PARAMETERS))
    args = parser.parse_args(argv)
    budget = dict(item.split("=", 1) for item in args.budget)
    package(args.stage, args.out, args.project_dir, args.infra, args.plans, budget=budget)


if __name__ == "__main__":
    main()
