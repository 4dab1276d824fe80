"""scripts/package.py: one deployable template (Chalice app + infra/), checked by
cfn-lint and by reading it: usage plans with the configured limits, partial
batch responses on every SQS mapping, an API key on every route but /health,
and no credentials anywhere. Packages the real app and a throwaway app that
already has the two SQS consumers."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from chalicelib.settings import QUEUES
from scripts import package

ROOT = Path(__file__).resolve().parents[2]
CFN_LINT = Path(sys.executable).with_name("cfn-lint")
# cfn-lint checks to ignore, each with the reason. Empty: the templates lint clean.
IGNORED_CHECKS = {}
PLANS = json.loads((ROOT / "chalicelib" / "usage_plans.json").read_text())
INFRA_PARAMETERS = package.load_template(ROOT / "infra" / "template.yml")["Parameters"]


def budget_parameters():
    """The connection budget's inputs as infra/template.yml declares them, for hand-made templates."""
    return json.loads(json.dumps({name: INFRA_PARAMETERS[name] for name in package.BUDGET_PARAMETERS}))

TINY_APP = textwrap.dedent('''
    from chalice import Chalice

    app = Chalice(app_name="shop")


    @app.route("/health")
    def health():
        return {"status": "ok"}


    @app.route("/products/{product_id}", methods=["GET"], api_key_required=True)
    def get_product(product_id):
        return {}


    @app.route("/forgotten", methods=["POST"])
    def forgotten():
        return {}


    @app.on_sqs_message(queue="shop-order-ingest", batch_size=10)
    def handle_order_ingest(event):
        return None


    @app.on_sqs_message(queue="shop-cache-invalidation", batch_size=10)
    def handle_cache_invalidation(event):
        return None
''')

TINY_CONFIG = {
    "version": "2.0",
    "app_name": "shop",
    "lambda_timeout": 45,
    "environment_variables": {"AWS_DEFAULT_REGION": "us-east-1", "POWERTOOLS_SERVICE_NAME": "shop"},
    "stages": {"dev": {"api_gateway_stage": "dev",
                       "environment_variables": {"STAGE": "dev", "DATABASE_SECRET_ARN": "", "REDIS_URL": "",
                                                 "DATABASE_URL": "mysql://root:@127.0.0.1:3306/shop"}}},
}


def lint(path):
    cmd = [str(CFN_LINT), "--format", "parseable"]
    if IGNORED_CHECKS:
        cmd += ["--ignore-checks", *IGNORED_CHECKS]
    result = subprocess.run(cmd + [str(path)], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


@pytest.fixture(scope="module")
def real_template(tmp_path_factory):
    out = tmp_path_factory.mktemp("package-real")
    path = package.package(stage="dev", out=out, quiet=True)
    return path, json.loads(path.read_text())


@pytest.fixture(scope="module")
def tiny_template(tmp_path_factory):
    project = tmp_path_factory.mktemp("tiny-app")
    (project / ".chalice").mkdir()
    (project / ".chalice" / "config.json").write_text(json.dumps(TINY_CONFIG))
    (project / "app.py").write_text(TINY_APP)
    (project / "requirements.txt").write_text("")
    out = project / "build"
    path = package.package(stage="dev", out=out, project_dir=project, quiet=True)
    return path, json.loads(path.read_text())


@pytest.fixture(params=["real", "tiny"])
def packaged(request, real_template, tiny_template):
    return real_template if request.param == "real" else tiny_template


def functions(template):
    return {k: r for k, r in template["Resources"].items() if r["Type"] == "AWS::Serverless::Function"}


def sqs_events(template):
    for name, fn in functions(template).items():
        for event_id, event in (fn["Properties"].get("Events") or {}).items():
            if event["Type"] == "SQS":
                yield name, event_id, event["Properties"]


# ------------------------------------------------------------------ cfn-lint
def test_infra_template_alone_passes_cfn_lint():
    code, output = lint(ROOT / "infra" / "template.yml")
    assert code == 0, output


def test_packaged_template_passes_cfn_lint(packaged):
    path, _ = packaged
    code, output = lint(path)
    assert code == 0, output


def test_cluster_mode_on_passes_cfn_lint_and_shards_both_redis_groups(real_template, tmp_path):
    """RedisClusterMode true: each replication group has RedisShards node groups of a primary and
    RedisReplicasPerShard replicas, its cluster-enabled parameter group, and the app's URL says cluster."""
    _, template = real_template
    clustered = json.loads(json.dumps(template))
    clustered["Parameters"]["RedisClusterMode"]["Default"] = "true"
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps(clustered))
    code, output = lint(path)
    assert code == 0, output
    assert template["Parameters"]["RedisClusterMode"]["Default"] == "false"   # one node stays the default
    assert template["Conditions"]["IsRedisCluster"] == {"Fn::Equals": [{"Ref": "RedisClusterMode"}, "true"]}
    for group in ("Redis", "RedisState"):
        props = template["Resources"][group]["Properties"]
        assert props["ClusterMode"] == {"Fn::If": ["IsRedisCluster", "enabled", "disabled"]}
        assert props["NumNodeGroups"] == {"Fn::If": ["IsRedisCluster", {"Ref": "RedisShards"}, {"Ref": "AWS::NoValue"}]}
        assert props["ReplicasPerNodeGroup"]["Fn::If"][1] == {"Ref": "RedisReplicasPerShard"}
        assert props["NumCacheClusters"]["Fn::If"][1] == {"Ref": "AWS::NoValue"}
        assert props["AutomaticFailoverEnabled"] is True   # cluster mode requires it


@pytest.mark.parametrize("reader_host", ["", "shop-dev-read.endpoint.proxy-abc.us-east-1.rds.amazonaws.com"])
def test_the_mysql_reader_option_lints_off_and_on_and_reaches_every_function(real_template, tmp_path, reader_host):
    _, template = real_template
    chosen = json.loads(json.dumps(template))
    chosen["Parameters"]["DatabaseReaderHost"]["Default"] = reader_host
    path = tmp_path / "reader.json"
    path.write_text(json.dumps(chosen))
    code, output = lint(path)
    assert code == 0, output
    assert chosen["Resources"]["DatabaseParameterGroup"]["Condition"] == "HasReader"
    for alarm, metric in (("ReaderFallbackAlarm", "ReaderFallback"), ("ReaderLagAlarm", "ReaderLag")):
        props = chosen["Resources"][alarm]["Properties"]   # what adapters/readers.py emits
        assert chosen["Resources"][alarm]["Condition"] == "HasReader"
        assert (props["Namespace"], props["MetricName"]) == ("Shop", metric)
    assert chosen["Resources"]["DatabaseParameterGroup"]["Properties"]["Parameters"] == {"event_scheduler": "ON"}
    for name, fn in functions(chosen).items():
        reader_url = fn["Properties"]["Environment"]["Variables"]["DATABASE_READER_URL"]
        assert reader_url["Fn::If"][0] == "HasReader" and reader_url["Fn::If"][2] == "", name


def test_lint_would_catch_a_broken_template(real_template, tmp_path):
    _, template = real_template
    broken = json.loads(json.dumps(template))
    broken["Resources"]["UsagePlanLimited"]["Properties"]["Throttle"]["BurstLimit"] = "five"
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    code, output = lint(path)
    assert code != 0 and "E3012" in output


# ------------------------------------------------------------------ contents
def test_one_template_holds_app_and_infra(real_template):
    path, template = real_template
    assert (path.parent / "deployment.zip").exists()
    assert template["Transform"][0] == "AWS::Serverless-2016-10-31"
    types = {r["Type"] for r in template["Resources"].values()}
    for required in ("AWS::Serverless::Api", "AWS::Serverless::Function", "AWS::EC2::VPC", "AWS::RDS::DBInstance",
                     "AWS::RDS::DBProxy", "AWS::ElastiCache::ReplicationGroup", "AWS::SQS::Queue",
                     "AWS::SecretsManager::Secret", "AWS::ApiGateway::UsagePlan", "AWS::ApiGateway::ApiKey",
                     "AWS::CloudWatch::Alarm", "AWS::CloudWatch::Dashboard"):
        assert required in types, required


def test_usage_plans_and_keys_have_the_configured_limits(packaged):
    _, template = packaged
    resources = template["Resources"]
    plans = [r for r in resources.values() if r["Type"] == "AWS::ApiGateway::UsagePlan"]
    assert len(plans) == len(PLANS["plans"])
    for name, plan in PLANS["plans"].items():
        suffix = package.logical_suffix(name)
        props = resources[f"UsagePlan{suffix}"]["Properties"]
        assert props["Throttle"] == {"RateLimit": plan["rate_per_second"], "BurstLimit": plan["burst"]}
        assert props["ApiStages"] == [{"ApiId": {"Ref": "RestAPI"}, "Stage": {"Ref": "RestAPI.Stage"}}]
        if plan.get("quota"):
            assert props["Quota"]["Limit"] == plan["quota"]["limit"]
    # One key per live generation of each client, on its client's plan.
    keys = {k: r for k, r in resources.items() if r["Type"] == "AWS::ApiGateway::ApiKey"}
    expected = {f"ApiKey{package.logical_suffix(name)}G{g}": client["plan"]
                for name, client in PLANS["clients"].items() for g in client["keys"]}
    assert set(keys) == set(expected)
    for key_id, plan in expected.items():
        assert "Value" not in keys[key_id]["Properties"]  # generated by API Gateway
        link = resources[f"UsagePlanKey{key_id[len('ApiKey'):]}"]["Properties"]
        assert link == {"KeyId": {"Ref": key_id}, "KeyType": "API_KEY",
                        "UsagePlanId": {"Ref": f"UsagePlan{package.logical_suffix(plan)}"}}


def test_rotation_adds_a_key_and_revocation_removes_one():
    from scripts import clients

    definitions = json.loads(json.dumps(PLANS))
    assert clients.rotate(definitions, "storefront") == 2
    keys = {k for k, r in package.api_gateway_resources(definitions).items() if r["Type"] == "AWS::ApiGateway::ApiKey"}
    assert {"ApiKeyStorefrontG1", "ApiKeyStorefrontG2"} <= keys  # both valid while clients move over
    clients.revoke(definitions, "storefront", 1)
    keys = {k for k, r in package.api_gateway_resources(definitions).items() if r["Type"] == "AWS::ApiGateway::ApiKey"}
    assert "ApiKeyStorefrontG1" not in keys and "ApiKeyStorefrontG2" in keys
    assert clients.rotate(definitions, "storefront") == 3  # a revoked generation never comes back
    env = package.function_environment(definitions)["API_KEY_CLIENTS"]
    assert {"Fn::Join": ["=", [{"Ref": "ApiKeyStorefrontG3"}, "storefront"]]} in env["Fn::Join"][1]


def test_every_route_but_health_requires_an_api_key(packaged):
    _, template = packaged
    body = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]
    assert body["securityDefinitions"]["api_key"] == {"type": "apiKey", "name": "x-api-key", "in": "header"}
    seen = []
    for path, methods in body["paths"].items():
        for method, op in methods.items():
            if method.startswith("x-") or method == "options":
                continue
            seen.append((method, path))
            if path == "/health":
                assert "security" not in op
            elif path.startswith("/customer/"):
                # Key AND customer token, in one requirement (two would mean either).
                assert op["security"] == [{"api_key": [], "customers": []}], (method, path)
            else:
                assert {"api_key": []} in op.get("security", []), (method, path)
    assert ("get", "/health") in seen and len(seen) > 1


def test_customer_routes_have_the_pools_cognito_authorizer(real_template):
    _, template = real_template
    resources = template["Resources"]
    body = resources["RestAPI"]["Properties"]["DefinitionBody"]
    customers = body["securityDefinitions"]["customers"]
    assert customers["x-amazon-apigateway-authorizer"] == {
        "type": "cognito_user_pools", "providerARNs": [{"Fn::GetAtt": ["CustomerUserPool", "Arn"]}]}
    assert any(p.startswith("/customer/") for p in body["paths"])
    env = resources["APIHandler"]["Properties"]["Environment"]["Variables"]
    assert env["APP_VERIFY_TOKENS"] == "false"  # the authorizer has verified the token
    assert env["COGNITO_USER_POOL_ID"] == {"Ref": "CustomerUserPool"}
    # The app checks the authorizer's claims against the app clients (the authorizer takes any of the pool's).
    assert env["COGNITO_APP_CLIENT_IDS"] == {"Ref": "CustomerUserPoolClient"}
    assert resources["CustomerUserPoolClient"]["Properties"]["GenerateSecret"] is False
    # No group of the pool gives power (every order is for admin-plan keys).
    assert not [r for r in resources.values() if r["Type"] == "AWS::Cognito::UserPoolGroup"]


def test_the_edge_limits_each_address_and_token_in_front_of_the_api_stage(real_template):
    """API Gateway's usage plans throttle per key and on a best-effort basis; the WAF's rate rules
    count per source address and per Authorization header before any key check."""
    _, template = real_template
    resources, parameters = template["Resources"], template["Parameters"]
    acl = resources["ApiWebAcl"]["Properties"]
    assert acl["Scope"] == "REGIONAL" and acl["DefaultAction"] == {"Allow": {}}
    rules = {r["Name"]: r for r in acl["Rules"]}
    keys = {name: r["Statement"]["RateBasedStatement"] for name, r in rules.items()}
    assert keys["requests-per-address"]["CustomKeys"] == [{"IP": {}}]
    assert keys["requests-per-token"]["CustomKeys"] == [
        {"Header": {"Name": "authorization", "TextTransformations": [{"Priority": 0, "Type": "NONE"}]}}]
    for name, parameter in (("requests-per-address", "EdgeRequestsPerAddress"),
                            ("requests-per-token", "EdgeRequestsPerToken")):
        statement = keys[name]
        assert statement["AggregateKeyType"] == "CUSTOM_KEYS"
        assert statement["Limit"] == {"Ref": parameter} and parameter in parameters  # a deploy-time setting
        assert statement["EvaluationWindowSec"] == {"Ref": "EdgeRateWindowSeconds"}
        # Refused in the contract's shape: 429 RATE_LIMITED with Retry-After.
        response = rules[name]["Action"]["Block"]["CustomResponse"]
        assert response["ResponseCode"] == 429 and {"Name": "Retry-After", "Value": "60"} in response["ResponseHeaders"]
        body = json.loads(acl["CustomResponseBodies"][response["CustomResponseBodyKey"]]["Content"])
        assert body["error"]["code"] == "RATE_LIMITED"
    association = resources["ApiWebAclAssociation"]["Properties"]
    assert association["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}
    parts = association["ResourceArn"]["Fn::Join"][1]
    assert {"Ref": "RestAPI"} in parts and {"Ref": "RestAPI.Stage"} in parts  # the API's own stage


def test_the_customer_pool_verifies_email_and_blocks_risky_sign_ups_and_sign_ins(real_template):
    _, template = real_template
    resources = template["Resources"]
    pool = resources["CustomerUserPool"]["Properties"]
    assert pool["AutoVerifiedAttributes"] == ["email"]  # the pool mails a code; email_verified once used
    assert pool["UserAttributeUpdateSettings"] == {"AttributesRequireVerificationBeforeUpdate": ["email"]}
    assert pool["UserPoolAddOns"] == {"AdvancedSecurityMode": "ENFORCED"} and pool["UserPoolTier"] == "PLUS"
    risk = resources["CustomerRiskConfiguration"]["Properties"]
    assert risk["UserPoolId"] == {"Ref": "CustomerUserPool"} and risk["ClientId"] == "ALL"
    leaked = risk["CompromisedCredentialsRiskConfiguration"]
    assert {"SIGN_UP", "SIGN_IN"} <= set(leaked["EventFilter"]) and leaked["Actions"] == {"EventAction": "BLOCK"}
    assert risk["AccountTakeoverRiskConfiguration"]["Actions"]["HighAction"]["EventAction"] == "BLOCK"
    client = resources["CustomerUserPoolClient"]["Properties"]
    assert {"email", "email_verified"} <= set(client["ReadAttributes"])  # what the app reads from the ID token


def test_tiny_app_route_without_api_key_required_gets_one(tiny_template):
    _, template = tiny_template
    op = template["Resources"]["RestAPI"]["Properties"]["DefinitionBody"]["paths"]["/forgotten"]["post"]
    assert op["security"] == [{"api_key": []}]


def test_sqs_mappings_report_batch_item_failures_on_the_infra_queues(tiny_template):
    _, template = tiny_template
    events = {fn: props for fn, _, props in sqs_events(template)}
    assert set(events) == {"HandleOrderIngest", "HandleCacheInvalidation"}
    assert events["HandleOrderIngest"]["Queue"] == {"Fn::GetAtt": ["OrderIngestQueue", "Arn"]}
    assert events["HandleCacheInvalidation"]["Queue"] == {"Fn::GetAtt": ["CacheInvalidationQueue", "Arn"]}
    for props in events.values():
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
        assert props["BatchSize"] == 10


def test_real_app_sqs_consumers_if_any_are_wired_the_same_way(real_template):
    _, template = real_template
    declared = "on_sqs_message" in "".join(p.read_text() for p in [ROOT / "app.py", *ROOT.glob("chalicelib/**/*.py")])
    events = list(sqs_events(template))
    if declared:
        assert events, "app declares SQS handlers but the template has no SQS event"
    for fn, _, props in events:
        assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"], fn
        assert props["Queue"]["Fn::GetAtt"][0] in {q.logical_id for q in QUEUES}, fn
    by_handler = {r["Properties"]["Handler"]: r for r in functions(template).values()}
    for q in QUEUES:  # every queue of the table has its consumer, on that queue alone
        queues = [e["Properties"]["Queue"] for e in by_handler[f"app.{q.handler}"]["Properties"]["Events"].values()]
        assert queues == [{"Fn::GetAtt": [q.logical_id, "Arn"]}]


def test_queues_have_dlq_redrive_and_visibility_of_six_consumer_timeouts(packaged):
    _, template = packaged
    resources = template["Resources"]
    visibility = template["Parameters"]["QueueVisibilityTimeout"]["Default"]
    consumer_timeouts = [fn["Properties"]["Timeout"] for fn in functions(template).values()
                         if any(e["Type"] == "SQS" for e in (fn["Properties"].get("Events") or {}).values())]
    assert visibility >= 6 * max(consumer_timeouts, default=0)
    for queue in (q.logical_id for q in QUEUES):
        dlq = queue.replace("Queue", "DeadLetterQueue")
        props = resources[queue]["Properties"]
        assert props["VisibilityTimeout"] == {"Ref": "QueueVisibilityTimeout"}
        assert props["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": [dlq, "Arn"]}
        assert resources[dlq]["Properties"]["MessageRetentionPeriod"] == 1209600


def test_tiny_app_visibility_follows_a_longer_consumer_timeout(tmp_path):
    template = {"Parameters": {"QueueVisibilityTimeout": {"Type": "Number", "Default": 360, "MinValue": 30},
                               "Stage": {"Type": "String", "Default": "dev"}, **budget_parameters()},
                "Resources": {"HandleOrderIngest": {"Type": "AWS::Serverless::Function", "Properties": {
                    "Timeout": 120, "Role": "arn:aws:iam::123456789012:role/x",
                    "Events": {"Q": {"Type": "SQS", "Properties": {"Queue": "shop-order-ingest", "BatchSize": 10}}}}}}}
    package.postprocess(template, PLANS)
    assert template["Parameters"]["QueueVisibilityTimeout"]["Default"] == 720
    assert template["Parameters"]["QueueVisibilityTimeout"]["MinValue"] == 720


def test_plain_event_source_mappings_get_partial_batch_responses_too():
    template = {"Parameters": {"QueueVisibilityTimeout": {"Default": 360}, "Stage": {"Default": "dev"},
                               **budget_parameters()},
                "Resources": {"Mapping": {"Type": "AWS::Lambda::EventSourceMapping", "Properties": {
                    "EventSourceArn": {"Fn::GetAtt": ["OrderIngestQueue", "Arn"]}, "FunctionName": "f"}}}}
    package.postprocess(template, PLANS)
    assert template["Resources"]["Mapping"]["Properties"]["FunctionResponseTypes"] == ["ReportBatchItemFailures"]


def test_sqs_handler_on_an_unknown_queue_fails_packaging():
    template = {"Parameters": {"QueueVisibilityTimeout": {"Default": 360}, "Stage": {"Default": "dev"}},
                "Resources": {"HandleOrderIngest": {"Type": "AWS::Serverless::Function", "Properties": {
                    "Timeout": 60, "Events": {"Q": {"Type": "SQS", "Properties": {
                        "Queue": {"Fn::Sub": "arn:${AWS::Partition}:sqs:${AWS::Region}:${AWS::AccountId}:no-such-queue"}}}}}}}}
    with pytest.raises(SystemExit, match="not an infra queue"):
        package.postprocess(template, PLANS)


# ------------------------------------------------------------------ connection budget
def test_packaged_concurrency_obeys_the_connection_budget(packaged):
    """Worked out again here from the template's own parameters: every function
    has a reserved concurrency, each SQS mapping stays within its function's, each
    environment's pool is the size the formula assumes, and the fleet's MySQL
    connections fit in RDS Proxy's share of max_connections (and use it)."""
    _, template = packaged
    params = template["Parameters"]
    inputs = {name: params[name]["Default"] for name in package.BUDGET_PARAMETERS}
    connections = inputs["DatabaseMaxConnections"] * inputs["DatabaseProxyMaxConnectionsPercent"] // 100
    per_environment = inputs["DatabaseConnectionsPerEnvironment"]
    environments = connections // per_environment
    reserved = {name: fn["Properties"]["ReservedConcurrentExecutions"] for name, fn in functions(template).items()}
    assert all(isinstance(n, int) and n >= 1 for n in reserved.values()), reserved
    assert sum(reserved.values()) * per_environment <= connections
    assert sum(reserved.values()) == environments, "the API gets what the others leave"
    assert reserved["HandleOrderIngest"] == environments * inputs["OrderIngestConnectionPercent"] // 100
    assert reserved["HandleCacheInvalidation"] == inputs["CacheInvalidationConcurrency"]
    # The tiny app has neither of these consumers.
    fixed = {name: inputs[share] for name, share in (("HandleFlashOrders", "FlashOrderConcurrency"),
                                                     ("HandleOrderExpiry", "OrderExpiryConcurrency"),
                                                     ("HandleRelatedProducts", "RelatedProductsConcurrency"),
                                                     ("HandleNotifications", "NotificationConcurrency"))
             if name in reserved}
    for name, share in fixed.items():
        assert reserved[name] == share, name
    for name in set(reserved) & {"WarmCache", "Migrate"}:
        assert reserved[name] == 1
    for name, fn in functions(template).items():
        assert fn["Properties"]["Environment"]["Variables"]["DB_MAX_IN_FLIGHT"] == str(per_environment), name
    events = list(sqs_events(template))
    assert {fn for fn, _, _ in events} == {"HandleOrderIngest", "HandleCacheInvalidation", *fixed}
    for fn, _, props in events:
        assert 2 <= props["ScalingConfig"]["MaximumConcurrency"] == reserved[fn] <= 1000, fn
    for name in package.BUDGET_PARAMETERS:  # pinned: a deploy-time override would leave the numbers behind
        assert params[name]["MinValue"] == params[name]["MaxValue"] == params[name]["Default"], name
    if "DatabaseProxyTargetGroup" in template["Resources"]:
        pool = template["Resources"]["DatabaseProxyTargetGroup"]["Properties"]["ConnectionPoolConfigurationInfo"]
        assert pool["MaxConnectionsPercent"] == {"Ref": "DatabaseProxyMaxConnectionsPercent"}
    assert f"at most {sum(reserved.values()) * per_environment} connections" in \
        template["Outputs"]["ConnectionBudget"]["Value"]


@pytest.mark.parametrize("change, message", [
    (lambda t: t["Resources"]["APIHandler"]["Properties"].update(
        ReservedConcurrentExecutions=t["Resources"]["APIHandler"]["Properties"]["ReservedConcurrentExecutions"] + 1),
     r"the fleet can open \d+ MySQL connections, the budget is \d+"),
    (lambda t: t["Resources"]["HandleOrderIngest"]["Properties"]["Events"]["HandleOrderIngestSqsEventSource"]
     ["Properties"]["ScalingConfig"].update(MaximumConcurrency=1000), "MaximumConcurrency 1000 above reserved"),
    (lambda t: t["Resources"]["WarmCache"]["Properties"].pop("ReservedConcurrentExecutions"),
     "WarmCache: ReservedConcurrentExecutions None"),
    (lambda t: t["Resources"]["Migrate"]["Properties"]["Environment"]["Variables"].update(DB_MAX_IN_FLIGHT="16"),
     "Migrate: DB_MAX_IN_FLIGHT '16', the budget assumes 1"),
])
def test_a_concurrency_past_the_budget_is_refused(real_template, change, message):
    _, template = real_template
    inputs = package.budget_inputs(template)
    package.check_connection_budget(template, inputs)  # as packaged
    broken = json.loads(json.dumps(template))
    change(broken)
    with pytest.raises(SystemExit, match=message):
        package.check_connection_budget(broken, inputs)


def _budget_template(**functions_):
    return {"Parameters": {"QueueVisibilityTimeout": {"Default": 360}, "Stage": {"Default": "dev"},
                           **budget_parameters()},
            "Resources": {name: {"Type": "AWS::Serverless::Function", "Properties": props}
                          for name, props in functions_.items()}}


def _consumer(**extra):
    return {"Timeout": 60, "Role": "arn:aws:iam::123456789012:role/x", **extra, "Events": {"Q": {
        "Type": "SQS", "Properties": {"Queue": "shop-order-ingest", "BatchSize": 10}}}}


def test_a_reserved_concurrency_set_in_the_chalice_config_counts_against_the_budget():
    api = {"Timeout": 60, "Role": "arn:aws:iam::123456789012:role/x"}
    template = _budget_template(APIHandler=dict(api), HandleOrderIngest=_consumer(ReservedConcurrentExecutions=10))
    package.postprocess(template, PLANS)
    resources = template["Resources"]
    assert resources["HandleOrderIngest"]["Properties"]["ReservedConcurrentExecutions"] == 10
    assert resources["HandleOrderIngest"]["Properties"]["Events"]["Q"]["Properties"]["ScalingConfig"] == \
        {"MaximumConcurrency": 10}
    assert resources["APIHandler"]["Properties"]["ReservedConcurrentExecutions"] == 260

    too_many = _budget_template(APIHandler=dict(api), HandleOrderIngest=_consumer(ReservedConcurrentExecutions=500))
    with pytest.raises(SystemExit, match="connection budget exceeded"):
        package.postprocess(too_many, PLANS)


def test_the_budget_follows_its_inputs_and_refuses_a_function_without_a_share():
    api = {"Timeout": 60, "Role": "arn:aws:iam::123456789012:role/x"}
    template = _budget_template(APIHandler=dict(api), HandleOrderIngest=_consumer())
    package.postprocess(template, PLANS, budget_overrides={"DatabaseMaxConnections": 1000,
                                                           "DatabaseConnectionsPerEnvironment": 2})
    resources, params = template["Resources"], template["Parameters"]
    # 1000 x 90% = 900 connections = 450 environments of 2; ingest 25% of them
    assert resources["HandleOrderIngest"]["Properties"]["ReservedConcurrentExecutions"] == 112
    assert resources["APIHandler"]["Properties"]["ReservedConcurrentExecutions"] == 338
    assert resources["APIHandler"]["Properties"]["Environment"]["Variables"]["DB_MAX_IN_FLIGHT"] == "2"
    assert params["DatabaseMaxConnections"]["MinValue"] == params["DatabaseMaxConnections"]["MaxValue"] == 1000

    # (postprocess would stop earlier: a function unknown to FUNCTION_POLICIES has no role either)
    stray = _budget_template(APIHandler=dict(api), Reporter=dict(api))
    with pytest.raises(SystemExit, match=r"no share for \['Reporter'\]"):
        package.apply_connection_budget(stray)


def test_functions_run_in_the_vpc_with_secret_not_credentials(packaged):
    _, template = packaged
    for name, fn in functions(template).items():
        props = fn["Properties"]
        assert props["VpcConfig"]["SubnetIds"] == [{"Ref": "PrivateSubnetA"}, {"Ref": "PrivateSubnetB"}]
        # Only the notifier may leave the VPC (HTTPS to SES's API, through the NAT gateway).
        extra = [{"Ref": "MailerSecurityGroup"}] if name == "HandleNotifications" else []
        assert props["VpcConfig"]["SecurityGroupIds"] == [{"Ref": "LambdaSecurityGroup"}, *extra]
        env = props["Environment"]["Variables"]
        if name == "Migrate":  # the master, and the app user it creates
            assert env["DATABASE_SECRET_ARN"] == {"Ref": "DatabaseSecret"}
            assert env["APP_DATABASE_SECRET_ARN"] == {"Ref": "AppDatabaseSecret"}
        else:
            assert env["DATABASE_SECRET_ARN"] == {"Ref": "AppDatabaseSecret"}
            assert "APP_DATABASE_SECRET_ARN" not in env
        assert env["DATABASE_HOST"] == {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}
        for setting, group in (("REDIS_URL", "Redis"), ("REDIS_STATE_URL", "RedisState")):  # the state store's own
            condition, cluster, single = env[setting]["Fn::If"]
            assert condition == "IsRedisCluster"
            assert cluster["Fn::Sub"].startswith(f"rediss+cluster://${{{group}.ConfigurationEndPoint.")
            assert single["Fn::Sub"].startswith(f"rediss://${{{group}.PrimaryEndPoint.")  # TLS: transit encryption
        assert env["CURSOR_SECRET_ARN"] == {"Ref": "CursorSecret"}
        assert env["ORDER_QUEUE_NAME"] == {"Fn::GetAtt": ["OrderIngestQueue", "QueueName"]}
        assert "DATABASE_URL" not in env
        assert not (set(env) & package.RESERVED_ENV), name
        assert {"Fn::Join": ["=", [{"Ref": "ApiKeyAdminG1"}, "admin"]]} in env["API_KEY_CLIENTS"]["Fn::Join"][1]
    text = json.dumps(template)
    for needle in ("shop-local-", "AWS_SECRET_ACCESS_KEY", "MasterUserPassword\": \"", "root:@"):
        assert needle not in text, needle
    db = template["Resources"]["Database"]["Properties"]
    assert db["MasterUserPassword"]["Fn::Sub"].startswith("{{resolve:secretsmanager:")


def test_credentials_check_rejects_a_password_in_the_environment():
    template = {"Resources": {"F": {"Type": "AWS::Serverless::Function", "Properties": {
        "Environment": {"Variables": {"DATABASE_URL": "mysql://shop:hunter2@db:3306/shop"}}}}}}
    with pytest.raises(SystemExit, match="embeds a password"):
        package.check_no_credentials(template)
    template["Resources"]["F"]["Properties"]["Environment"]["Variables"] = {"DB_PASSWORD": "x"}
    with pytest.raises(SystemExit, match="credential"):
        package.check_no_credentials(template)


def test_multi_az_is_a_parameter_and_alarms_watch_the_documented_metrics(real_template):
    _, template = real_template
    params, resources = template["Parameters"], template["Resources"]
    assert params["DatabaseMultiAZ"]["AllowedValues"] == ["true", "false"]
    assert resources["Database"]["Properties"]["MultiAZ"] == {"Fn::If": ["IsMultiAZ", True, False]}
    assert resources["Database"]["Properties"]["EngineVersion"] == {"Ref": "DatabaseEngineVersion"}
    assert params["DatabaseEngineVersion"]["Default"].startswith("8.")
    # Two Redis roles: the cache evicts only keys with a TTL, the state never evicts; both encrypted.
    for group, policy in (("Redis", "volatile-lfu"), ("RedisState", "noeviction")):
        props = resources[group]["Properties"]
        assert props["TransitEncryptionEnabled"] is True and props["AtRestEncryptionEnabled"] is True
        assert props["SecurityGroupIds"] == [{"Ref": "RedisSecurityGroup"}]
        condition, cluster, single = props["CacheParameterGroupName"]["Fn::If"]
        parameters = resources[single["Ref"]]["Properties"]
        assert parameters["Properties"] == {"maxmemory-policy": policy}
        assert parameters["CacheParameterGroupFamily"] == "redis" + props["EngineVersion"].split(".")[0]
        clustered = resources[cluster["Ref"]]
        assert clustered["Condition"] == condition == "IsRedisCluster"
        assert clustered["Properties"]["Properties"] == {"maxmemory-policy": policy, "cluster-enabled": "yes"}
    state_memory = resources["StateMemoryHighAlarm"]["Properties"]
    watched = [m["MetricStat"]["Metric"] for m in state_memory["Metrics"] if "MetricStat" in m]
    assert {(m["Namespace"], m["MetricName"]) for m in watched} == {
        ("AWS/ElastiCache", "DatabaseMemoryUsagePercentage")}
    nodes = {(m["Dimensions"][0]["Value"]["Fn::If"][1]["Fn::Sub"], m["Dimensions"][0]["Value"]["Fn::If"][2]["Fn::Sub"])
             for m in watched}
    assert nodes == {("${RedisState}-0001-001", "${RedisState}-001"), ("${RedisState}-0002-001", "${RedisState}-002")}
    assert state_memory["Threshold"] == {"Ref": "StateMemoryAlarmPercent"}
    latency = resources["OrderLatencyP99Alarm"]["Properties"]
    assert (latency["Namespace"], latency["MetricName"], latency["ExtendedStatistic"]) == ("Shop", "OrderLatency", "p99")
    cache_metrics = {(m["MetricStat"]["Metric"]["MetricName"], m["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
                     for m in resources["CacheHitRatioLowAlarm"]["Properties"]["Metrics"] if "MetricStat" in m}
    assert cache_metrics == {(metric, result) for metric in ("ProductCache", "SearchCache")
                             for result in ("HIT", "MISS", "BYPASS", "STALE")}
    for dlq in ("OrderIngestDeadLetterAlarm", "CacheInvalidationDeadLetterAlarm"):
        assert resources[dlq]["Properties"]["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert resources["Api5xxRateAlarm"]["Properties"]["MetricName"] == "5XXError"
    outbox = resources["OutboxStalledAlarm"]["Properties"]  # what the lifecycle function emits each minute
    assert (outbox["Namespace"], outbox["MetricName"], outbox["Unit"]) == ("Shop", "OutboxOldestSeconds", "Seconds")
    dashboard = json.dumps(resources["Dashboard"]["Properties"]["DashboardBody"])
    for needle in ("OrderLatency", "ProductCache", "SearchCache", "Errors", "RequestLatency", "5XXError"):
        assert needle in dashboard
    assert params["Stage"]["Default"] == "dev"  # the API Gateway stage the 5xx alarm watches


@pytest.mark.parametrize("response_type, status, code, retry_after", [
    ("ACCESS_DENIED", "403", "FORBIDDEN", None),
    ("INVALID_API_KEY", "403", "FORBIDDEN", None),
    ("MISSING_AUTHENTICATION_TOKEN", "403", "FORBIDDEN", None),
    ("THROTTLED", "429", "RATE_LIMITED", "1"),
    ("QUOTA_EXCEEDED", "429", "RATE_LIMITED", "3600"),
    ("REQUEST_TOO_LARGE", "413", "PAYLOAD_TOO_LARGE", None),
    ("UNSUPPORTED_MEDIA_TYPE", "415", "UNSUPPORTED_MEDIA_TYPE", None),
    ("INTEGRATION_FAILURE", "503", "SERVICE_UNAVAILABLE", "1"),
    ("DEFAULT_4XX", None, "VALIDATION_ERROR", None),
    ("DEFAULT_5XX", None, "SERVICE_UNAVAILABLE", "2"),
])
def test_api_gateway_answers_in_the_contract_shape(real_template, response_type, status, code, retry_after):
    """What API Gateway answers itself (no key, throttled, too large, no route)
    carries the contract's error body and the request id, like the app's own."""
    _, template = real_template
    [props] = [r["Properties"] for r in template["Resources"].values()
               if r["Type"] == "AWS::ApiGateway::GatewayResponse" and r["Properties"]["ResponseType"] == response_type]
    assert props["RestApiId"] == {"Ref": "RestAPI"} and props.get("StatusCode") == status
    headers = props["ResponseParameters"]
    assert headers["gatewayresponse.header.X-Request-Id"] == "context.requestId"
    assert headers.get("gatewayresponse.header.Retry-After") == (f"'{retry_after}'" if retry_after else None)
    # Render the mapping template as API Gateway would, with a message that needs escaping.
    rendered = (props["ResponseTemplates"]["application/json"]
                .replace("$context.requestId", "req-123")
                .replace("$context.error.messageString", json.dumps('Bad "thing"')))
    error = json.loads(rendered)["error"]
    assert (error["code"], error["request_id"]) == (code, "req-123") and error["message"]
    assert code in {cls.code for cls in _error_classes()}


def _error_classes():
    from chalicelib.domain.errors import ShopError

    todo, seen = [ShopError], []
    while todo:
        cls = todo.pop()
        seen.append(cls)
        todo.extend(cls.__subclasses__())
    return seen


# ------------------------------------------------------------------ least privilege
def test_each_function_has_a_role_of_its_own_with_only_its_policy(packaged):
    _, template = packaged
    resources = template["Resources"]
    roles = {name: fn["Properties"]["Role"]["Fn::GetAtt"][0] for name, fn in functions(template).items()}
    assert len(set(roles.values())) == len(roles)  # no role shared
    for name, role_id in roles.items():
        assert resources[role_id]["Properties"]["ManagedPolicyArns"] == [
            {"Ref": "LambdaBasePolicy"}, {"Ref": package.FUNCTION_POLICIES[name]}]
        assert "Policies" not in resources[role_id]["Properties"]
    assert "DefaultRole" not in resources  # Chalice's role with sqs:* on "*"


def statements(template, policy):
    return {st["Sid"]: st for st in template["Resources"][policy]["Properties"]["PolicyDocument"]["Statement"]}


def test_policies_grant_each_function_only_what_it_uses(real_template):
    _, template = real_template
    text = json.dumps
    api = statements(template, "ApiAccessPolicy")
    assert set(api) == {"ReadAppDatabaseSecret", "ReadCursorSecret", "SendToQueues"}
    assert api["ReadAppDatabaseSecret"]["Resource"] == {"Ref": "AppDatabaseSecret"}
    assert "sqs:ReceiveMessage" not in text(api)
    ingest = statements(template, "OrderIngestAccessPolicy")
    assert ingest["ConsumeOrderQueue"]["Resource"] == {"Fn::GetAtt": ["OrderIngestQueue", "Arn"]}
    assert ingest["SendInvalidations"]["Resource"] == {"Fn::GetAtt": ["CacheInvalidationQueue", "Arn"]}
    assert ingest["HandOffFlashOrders"]["Resource"] == {"Fn::GetAtt": ["FlashOrderQueue", "Arn"]}
    assert "sqs:ReceiveMessage" not in text(ingest["HandOffFlashOrders"])
    invalidation = statements(template, "CacheInvalidationAccessPolicy")
    assert invalidation["ConsumeInvalidationQueue"]["Resource"] == {"Fn::GetAtt": ["CacheInvalidationQueue", "Arn"]}
    assert "sqs:SendMessage" not in text(invalidation)
    flash = statements(template, "FlashOrderAccessPolicy")
    assert flash["ConsumeFlashOrderQueue"]["Resource"] == {"Fn::GetAtt": ["FlashOrderQueue", "Arn"]}
    assert flash["SendInvalidations"]["Resource"] == {"Fn::GetAtt": ["CacheInvalidationQueue", "Arn"]}
    assert {"Fn::GetAtt": ["FlashOrderQueue", "Arn"]} in api["SendToQueues"]["Resource"]
    assert set(statements(template, "WarmCacheAccessPolicy")) == {"ReadAppDatabaseSecret", "ReadCursorSecret"}
    # Only the functions that sign cursors (the API, the warmer's searches) may read their key.
    for policy in package.FUNCTION_POLICIES.values():
        reads_cursor_key = '{"Ref": "CursorSecret"}' in text(statements(template, policy))
        assert reads_cursor_key == (policy in ("ApiAccessPolicy", "WarmCacheAccessPolicy")), policy
    relay = statements(template, "LifecycleAccessPolicy")
    assert relay["PublishOrderEvents"] == {"Sid": "PublishOrderEvents", "Effect": "Allow", "Action": "sns:Publish",
                                           "Resource": {"Ref": "OrderEventsTopic"}}
    assert relay["StartExpiryTimers"]["Resource"] == {"Fn::GetAtt": ["OrderExpiryQueue", "Arn"]}
    expiry = statements(template, "OrderExpiryAccessPolicy")
    assert set(expiry) == {"ReadAppDatabaseSecret", "ConsumeAndRestartExpiryTimers"}
    assert expiry["ConsumeAndRestartExpiryTimers"]["Resource"] == {"Fn::GetAtt": ["OrderExpiryQueue", "Arn"]}
    assert set(statements(template, "FlashReconcileAccessPolicy")) == {"ReadAppDatabaseSecret", "ReadFlashQueueDepth"}
    related = statements(template, "RelatedProductsAccessPolicy")
    assert set(related) == {"ReadAppDatabaseSecret", "ConsumeRelatedProductsQueue"}
    assert related["ConsumeRelatedProductsQueue"]["Resource"] == {"Fn::GetAtt": ["RelatedProductsQueue", "Arn"]}
    assert "sqs:ReceiveMessage" not in text(statements(template, "FlashReconcileAccessPolicy"))  # reads depth only
    # One relay at a time keeps each order's events in order.
    assert template["Resources"]["Lifecycle"]["Properties"]["ReservedConcurrentExecutions"] == 1
    # Only the migrate function may read the master secret.
    for policy in package.FUNCTION_POLICIES.values():
        reads_master = '{"Ref": "DatabaseSecret"}' in text(statements(template, policy))
        assert reads_master == (policy == "MigrateAccessPolicy"), policy
    for st in statements(template, "LambdaBasePolicy").values():
        assert not any(action.startswith(("sqs:", "secretsmanager:")) for action in st["Action"])


def test_the_migrate_function_may_run_for_the_longest_lambda_allows(real_template):
    _, template = real_template
    assert template["Resources"]["Migrate"]["Properties"]["Timeout"] == 900  # an ALTER on a big table


def test_a_function_without_a_policy_fails_packaging():
    template = {"Resources": {"Surprise": {"Type": "AWS::Serverless::Function", "Properties": {
        "Role": {"Fn::GetAtt": ["DefaultRole", "Arn"]}}}}}
    with pytest.raises(SystemExit, match="no IAM policy for this function"):
        package.postprocess(template, PLANS)


def test_database_users_rotation_and_deletion_protection(real_template):
    _, template = real_template
    params, resources = template["Parameters"], template["Resources"]
    assert template["Transform"] == ["AWS::Serverless-2016-10-31", "AWS::SecretsManager-2024-09-16"]
    assert params["DatabaseDeletionProtection"]["Default"] == "true"
    assert resources["Database"]["Properties"]["DeletionProtection"] == {"Fn::If": ["IsDeletionProtected", True, False]}
    assert params["DatabaseMasterUsername"]["Default"] != params["DatabaseAppUsername"]["Default"]
    rotations = {r["Properties"]["SecretId"]["Ref"]: r["Properties"] for r in resources.values()
                 if r["Type"] == "AWS::SecretsManager::RotationSchedule"}
    assert rotations["DatabaseSecret"]["HostedRotationLambda"]["RotationType"] == "MySQLSingleUser"
    # Two alternating users: environments holding the previous password keep working.
    assert rotations["AppDatabaseSecret"]["HostedRotationLambda"]["RotationType"] == "MySQLMultiUser"
    assert rotations["AppDatabaseSecret"]["HostedRotationLambda"]["MasterSecretArn"] == {"Ref": "DatabaseSecret"}
    assert "masterarn" in resources["AppDatabaseSecret"]["Properties"]["GenerateSecretString"]["SecretStringTemplate"]["Fn::Sub"]
    proxy_secrets = [a["SecretArn"] for a in resources["DatabaseProxy"]["Properties"]["Auth"]]
    assert proxy_secrets == [{"Ref": "DatabaseSecret"}, {"Ref": "AppDatabaseSecret"}]


def test_the_package_ships_the_amazon_root_cas_it_verifies_against(real_template):
    import zipfile

    path, _ = real_template
    with zipfile.ZipFile(path.parent / "deployment.zip") as zf:
        shipped = zf.read("chalicelib/certs/aws-trust.pem").decode()
    assert shipped == (ROOT / "chalicelib" / "certs" / "aws-trust.pem").read_text()
    assert shipped.count("BEGIN CERTIFICATE") == 5
    from scripts import aws_ca_bundle

    assert shipped == aws_ca_bundle.bundle_text()  # the same roots as the locked certifi's


def test_the_package_ships_the_flash_gate_s_lua_scripts(real_template):
    """The gate reads its scripts from chalicelib/adapters/lua/ when it is imported:
    every one is in the zip as it is here (the artifact test runs them from there)."""
    import zipfile

    path, _ = real_template
    scripts = sorted((ROOT / "chalicelib" / "adapters" / "lua").glob("*.lua"))
    assert len(scripts) >= 12
    with zipfile.ZipFile(path.parent / "deployment.zip") as zf:
        for script in scripts:
            assert zf.read(f"chalicelib/adapters/lua/{script.name}").decode() == script.read_text(), script.name


def test_queues_that_settings_subscribe_to_a_topic_are_subscribed_with_raw_delivery_and_a_filter(real_template):
    """QueueDef.topic_setting (chalicelib/settings.py) -> an SNS subscription of
    the queue to that topic, and a queue policy letting that topic alone send."""
    from chalicelib.settings import QUEUES

    _, template = real_template
    resources = template["Resources"]
    subscribed = [q for q in QUEUES if q.topic_setting]
    assert [q.logical_id for q in subscribed] == ["RelatedProductsQueue", "NotificationQueue"]
    for q in subscribed:
        topic = {"Ref": package.TOPICS[q.topic_setting]}
        subscription = resources[f"{q.logical_id}Subscription"]["Properties"]
        assert subscription == {"TopicArn": topic, "Protocol": "sqs", "RawMessageDelivery": True,
                                "Endpoint": {"Fn::GetAtt": [q.logical_id, "Arn"]},
                                "FilterPolicyScope": "MessageAttributes",
                                "FilterPolicy": {"event_type": list(q.event_types)}}
        policy = resources[f"{q.logical_id}TopicPolicy"]["Properties"]
        assert policy["Queues"] == [{"Ref": q.logical_id}]
        [statement] = policy["PolicyDocument"]["Statement"]
        assert statement["Principal"] == {"Service": "sns.amazonaws.com"} and statement["Action"] == "sqs:SendMessage"
        assert statement["Condition"] == {"ArnEquals": {"aws:SourceArn": topic}}


def test_only_the_notifier_can_reach_ses_which_has_no_vpc_endpoint(real_template):
    """SES's API has no interface endpoint: the private subnets route to a NAT gateway, and
    only the notifier's extra security group lets HTTPS out of the VPC."""
    _, template = real_template
    resources = template["Resources"]
    route = resources["PrivateNatRoute"]["Properties"]
    assert route["RouteTableId"] == {"Ref": "PrivateRouteTable"} and route["NatGatewayId"] == {"Ref": "NatGateway"}
    assert resources["NatGateway"]["Properties"]["SubnetId"] == {"Ref": "PublicSubnet"}
    leaving = {name for name, res in resources.items() if res["Type"] == "AWS::EC2::SecurityGroup"
               and any(rule.get("CidrIp") == "0.0.0.0/0" for rule in res["Properties"].get("SecurityGroupEgress", []))}
    assert leaving == {"MailerSecurityGroup"}
    users = {name for name, fn in functions(template).items()
             if {"Ref": "MailerSecurityGroup"} in fn["Properties"]["VpcConfig"]["SecurityGroupIds"]}
    assert users == {"HandleNotifications"}
