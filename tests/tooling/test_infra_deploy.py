"""Deploy to the local AWS endpoint what it supports, from the same generated
template scripts/package.py builds, and check queues, keys and usage plans.

moto's CloudFormation implements AWS::SQS::Queue, VPC/subnets/security groups
and route tables but not API Gateway API keys, usage plans or usage plan keys
(nor RDS Proxy, ElastiCache, Secrets Manager, alarms). So: a CloudFormation
stack of the supported resources (those whose references stay inside the
supported set), and the generated AWS::ApiGateway::ApiKey / UsagePlan /
UsagePlanKey resources replayed as the equivalent boto3 calls.

The endpoint is $AWS_ENDPOINT_URL (default http://127.0.0.1:4566); if nothing
answers there, this module starts its own (scripts/aws_endpoint.py) on a free port."""
import copy
import json
import os
import re
import time
import uuid
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from chalicelib.entrypoints import migrate_function
from scripts import deploy, localstack, package

ROOT = Path(__file__).resolve().parents[2]
PLANS = json.loads((ROOT / "chalicelib" / "usage_plans.json").read_text())
# Resource types the local endpoint (moto 5) creates through CloudFormation.
CFN_SUPPORTED = {
    "AWS::SQS::Queue", "AWS::EC2::VPC", "AWS::EC2::Subnet", "AWS::EC2::SecurityGroup",
    "AWS::EC2::RouteTable", "AWS::EC2::SubnetRouteTableAssociation",
}
API_TYPES = ("AWS::ApiGateway::ApiKey", "AWS::ApiGateway::UsagePlan", "AWS::ApiGateway::UsagePlanKey")




def _client(service, endpoint, timeout=5):
    return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="test",
                        aws_secret_access_key="test",
                        config=Config(connect_timeout=timeout, read_timeout=30, retries={"max_attempts": 1}))


def _answers(endpoint):
    try:
        _client("sqs", endpoint, timeout=1).list_queues()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def endpoint(tmp_path_factory):
    url = os.environ.get("AWS_ENDPOINT_URL") or "http://127.0.0.1:4566"
    if _answers(url):
        yield url
        return
    from tests.conftest import free_port

    port = free_port()
    proc = localstack.start_moto("127.0.0.1", port, tmp_path_factory.mktemp("aws-endpoint") / "endpoint.log")
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    proc.wait(10)


# ------------------------------------------------------------------ template subset
def references(node):
    """Logical ids a template fragment refers to (Ref, GetAtt, ${...} in Sub)."""
    found = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Ref" and isinstance(value, str):
                found.add(value.split(".")[0])
            elif key == "Fn::GetAtt":
                found.add(value[0] if isinstance(value, list) else value.split(".")[0])
            elif key == "Fn::Sub":
                text = value[0] if isinstance(value, list) else value
                found |= {m.split(".")[0] for m in re.findall(r"\$\{([^!}][^}]*)\}", text)}
                if isinstance(value, list):
                    found |= references(value[1])
            else:
                found |= references(value)
    elif isinstance(node, list):
        for item in node:
            found |= references(item)
    return found


def supported_subset(template):
    """The resources of supported types whose references stay within the subset, to a fixed point."""
    params = set(template.get("Parameters", {}))
    chosen = {k for k, r in template["Resources"].items() if r["Type"] in CFN_SUPPORTED}
    while True:
        keep = {k for k in chosen
                if all(ref in chosen or ref in params or ref.startswith("AWS::")
                       for ref in references(template["Resources"][k]))}
        if keep == chosen:
            break
        chosen = keep
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": template["Parameters"],
        "Conditions": template.get("Conditions", {}),
        "Resources": {k: template["Resources"][k] for k in sorted(chosen)},
    }


def resolve(node, params, ids):
    """Enough intrinsic-function evaluation for the generated API Gateway resources and the edge's web ACL."""
    if isinstance(node, dict):
        if "Ref" in node:
            return {**params, **ids}[node["Ref"]]
        if "Fn::Sub" in node:
            values = {**params, **ids}
            return re.sub(r"\$\{([^}]+)\}", lambda m: str(values[m.group(1)]), node["Fn::Sub"])
        if "Fn::Join" in node:
            separator, parts = node["Fn::Join"]
            return separator.join(str(resolve(part, params, ids)) for part in parts)
        return {k: resolve(v, params, ids) for k, v in node.items()}
    if isinstance(node, list):
        return [resolve(v, params, ids) for v in node]
    return node


def replay_api_gateway(apigw, resources, params, rest_api_id, stage_name):
    """Create the generated ApiKey / UsagePlan / UsagePlanKey resources with boto3, in dependency order."""
    ids = {"RestAPI": rest_api_id, "RestAPI.Stage": stage_name}
    for type_ in API_TYPES:
        for logical_id, res in resources.items():
            if res["Type"] != type_:
                continue
            props = resolve(res["Properties"], params, ids)
            if type_ == "AWS::ApiGateway::ApiKey":
                created = apigw.create_api_key(name=props["Name"], description=props.get("Description", ""),
                                               enabled=props.get("Enabled", True))
            elif type_ == "AWS::ApiGateway::UsagePlan":
                kwargs = {
                    "name": props["UsagePlanName"],
                    "description": props.get("Description", ""),
                    "throttle": {"rateLimit": props["Throttle"]["RateLimit"],
                                 "burstLimit": props["Throttle"]["BurstLimit"]},
                    "apiStages": [{"apiId": s["ApiId"], "stage": s["Stage"]} for s in props["ApiStages"]],
                }
                if "Quota" in props:
                    kwargs["quota"] = {"limit": props["Quota"]["Limit"], "period": props["Quota"]["Period"]}
                created = apigw.create_usage_plan(**kwargs)
            else:
                created = apigw.create_usage_plan_key(usagePlanId=props["UsagePlanId"], keyId=props["KeyId"],
                                                      keyType=props["KeyType"])
            ids[logical_id] = created["id"]
    return ids


# ------------------------------------------------------------------ the deployment
@pytest.fixture(scope="module")
def deployed(endpoint, test_env, tmp_path_factory):
    run = uuid.uuid4().hex[:8]
    template = package.build_merge_template(plans=PLANS)
    params = {p: spec.get("Default") for p, spec in template["Parameters"].items()}
    params.update({"Stage": f"t{run}", "QueuePrefix": f"it-{run}-shop", "QueueVisibilityTimeout": 360,
                   "MaxReceiveCount": 5})
    subset = supported_subset(template)
    cfn = _client("cloudformation", endpoint)
    stack_name = f"shop-infra-test-{run}"
    config = {"stack_name": stack_name, "region": "us-east-1", "artifact_bucket": None,
              "parameters": {k: params[k] for k in ("Stage", "QueuePrefix", "QueueVisibilityTimeout", "MaxReceiveCount")}}
    zip_path = tmp_path_factory.mktemp("deploy") / "deployment.zip"
    zip_path.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip: the subset has no functions
    clients = {name: _client(name, endpoint) for name in ("s3", "cloudformation", "lambda", "sts")}
    migrations = []

    def migrate(stack):  # the packaged function itself is run from the artifact in test_artifact.py
        migrations.append(stack)
        return migrate_function.handle_migrate({})

    first = deploy.deploy(copy.deepcopy(config), copy.deepcopy(subset), zip_path, clients, migrate=migrate,
                          poll_seconds=0.2, say=lambda line: None)
    migrated_by_first = list(migrations)  # later tests deploy again, in any order
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]

    apigw = _client("apigateway", endpoint)
    api = apigw.create_rest_api(name=f"shop-test-{run}")
    root = next(r["id"] for r in apigw.get_resources(restApiId=api["id"])["items"] if r["path"] == "/")
    apigw.put_method(restApiId=api["id"], resourceId=root, httpMethod="GET", authorizationType="NONE",
                     apiKeyRequired=True)
    apigw.put_integration(restApiId=api["id"], resourceId=root, httpMethod="GET", type="MOCK")
    apigw.create_deployment(restApiId=api["id"], stageName=params["Stage"])
    api_resources = {k: r for k, r in template["Resources"].items() if r["Type"] in API_TYPES}
    ids = replay_api_gateway(apigw, api_resources, params, api["id"], params["Stage"])

    yield {"stack": stack, "stack_name": stack_name, "subset": subset, "params": params, "api_id": api["id"],
           "ids": ids, "endpoint": endpoint, "template": template, "first_deploy": first, "config": config,
           "zip": zip_path, "clients": clients, "migrate": migrate, "migrations": migrations,
           "migrated_by_first": migrated_by_first}

    for logical_id, res in api_resources.items():
        if res["Type"] == "AWS::ApiGateway::UsagePlan":
            for key in apigw.get_usage_plan_keys(usagePlanId=ids[logical_id])["items"]:
                apigw.delete_usage_plan_key(usagePlanId=ids[logical_id], keyId=key["id"])
            apigw.delete_usage_plan(usagePlanId=ids[logical_id])
        elif res["Type"] == "AWS::ApiGateway::ApiKey":
            apigw.delete_api_key(apiKey=ids[logical_id])
    apigw.delete_rest_api(restApiId=api["id"])
    try:
        cfn.delete_stack(StackName=stack_name)
    except ClientError:
        # moto deletes the VPC before its security groups and gives up
        # (DependencyViolation); at least leave no queues on a shared endpoint.
        sqs = _client("sqs", endpoint)
        for url in sqs.list_queues(QueueNamePrefix=params["QueuePrefix"]).get("QueueUrls", []):
            sqs.delete_queue(QueueUrl=url)


def test_stack_of_supported_resources_is_created(deployed):
    assert deployed["stack"]["StackStatus"] == "CREATE_COMPLETE", deployed["stack"].get("StackStatusReason")
    chosen = set(deployed["subset"]["Resources"])
    assert {"OrderIngestQueue", "OrderIngestDeadLetterQueue", "CacheInvalidationQueue",
            "CacheInvalidationDeadLetterQueue"} <= chosen
    # The network came along too: VPC, private subnets, Lambda security group.
    assert {"Vpc", "PrivateSubnetA", "PrivateSubnetB", "LambdaSecurityGroup"} <= chosen
    cfn = _client("cloudformation", deployed["endpoint"])
    created = {r["LogicalResourceId"] for r in
               cfn.list_stack_resources(StackName=deployed["stack_name"])["StackResourceSummaries"]}
    assert chosen <= created


def test_queues_exist_with_dead_letter_redrive_and_visibility(deployed):
    sqs = _client("sqs", deployed["endpoint"])
    prefix = deployed["params"]["QueuePrefix"]
    for base in ("order-ingest", "cache-invalidation"):
        url = sqs.get_queue_url(QueueName=f"{prefix}-{base}")["QueueUrl"]
        dlq_url = sqs.get_queue_url(QueueName=f"{prefix}-{base}-dlq")["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        dlq_attrs = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"] == dlq_attrs["QueueArn"]
        assert int(redrive["maxReceiveCount"]) == 5
        assert int(attrs["VisibilityTimeout"]) == 360
        assert int(dlq_attrs["MessageRetentionPeriod"]) == 14 * 24 * 3600


def test_a_message_that_keeps_failing_lands_in_the_dead_letter_queue(deployed):
    """The redrive really works on the endpoint: receive without deleting maxReceiveCount times."""
    sqs = _client("sqs", deployed["endpoint"])
    prefix = deployed["params"]["QueuePrefix"]
    url = sqs.get_queue_url(QueueName=f"{prefix}-order-ingest")["QueueUrl"]
    dlq_url = sqs.get_queue_url(QueueName=f"{prefix}-order-ingest-dlq")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody=json.dumps({"orders": []}))
    for _ in range(5):
        got = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1, VisibilityTimeout=0)["Messages"]
        assert len(got) == 1
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages") is None
    moved = sqs.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=1)["Messages"]
    assert json.loads(moved[0]["Body"]) == {"orders": []}


def test_usage_plans_exist_with_the_configured_limits(deployed):
    apigw = _client("apigateway", deployed["endpoint"])
    plans = {p["name"]: p for p in apigw.get_usage_plans(limit=500)["items"]}
    stage = deployed["params"]["Stage"]
    for name, plan in PLANS["plans"].items():
        got = plans[f"shop-{stage}-{name}"]
        assert got["throttle"] == {"rateLimit": plan["rate_per_second"], "burstLimit": plan["burst"]}
        assert got["apiStages"] == [{"apiId": deployed["api_id"], "stage": stage}]


def test_each_client_has_its_enabled_api_key_on_its_plan(deployed):
    apigw = _client("apigateway", deployed["endpoint"])
    stage = deployed["params"]["Stage"]
    for name, client in PLANS["clients"].items():
        plan_id = deployed["ids"][f"UsagePlan{package.logical_suffix(client['plan'])}"]
        names = {k["name"]: k["id"] for k in apigw.get_usage_plan_keys(usagePlanId=plan_id)["items"]}
        for generation in client["keys"]:
            key = apigw.get_api_key(apiKey=names[f"shop-{stage}-{name}-{generation}"], includeValue=True)
            assert key["enabled"] is True
            assert key["value"] and not key["value"].startswith("shop-local-")  # generated, not the local key


# ------------------------------------------------------------------ make deploy (scripts/deploy.py)
def test_deploy_creates_the_stack_from_uploaded_artifacts_then_migrates(deployed):
    first, s3 = deployed["first_deploy"], deployed["clients"]["s3"]
    assert first["stack"] == "created"
    assert deployed["migrated_by_first"] == [deployed["stack_name"]]
    assert first["migrate"] == {"applied": []}  # the session's database is already migrated
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=first["bucket"])["Contents"]}
    assert any(k.startswith(f"{deployed['stack_name']}/code-") for k in keys)
    assert first["template_url"].rsplit("/", 2)[-2:] == [deployed["stack_name"],
                                                         next(k.split("/")[1] for k in keys if "/template-" in k)]
    assert s3.get_bucket_versioning(Bucket=first["bucket"])["Status"] == "Enabled"


def test_deploy_again_without_changes_uploads_nothing_and_still_migrates(deployed):
    s3, first = deployed["clients"]["s3"], deployed["first_deploy"]
    before = s3.list_objects_v2(Bucket=first["bucket"])["KeyCount"]
    again = deploy.deploy(copy.deepcopy(deployed["config"]), copy.deepcopy(deployed["subset"]), deployed["zip"],
                          deployed["clients"], migrate=deployed["migrate"], poll_seconds=0.2, say=lambda line: None)
    assert again["stack"] == "unchanged"
    assert s3.list_objects_v2(Bucket=first["bucket"])["KeyCount"] == before
    assert deployed["migrations"][-1] == deployed["stack_name"] and len(deployed["migrations"]) >= 2


def test_deploy_with_a_changed_parameter_updates_the_stack(deployed):
    config = copy.deepcopy(deployed["config"])
    config["parameters"]["MaxReceiveCount"] = 7
    changed = deploy.deploy(config, copy.deepcopy(deployed["subset"]), deployed["zip"], deployed["clients"],
                            migrate=deployed["migrate"], poll_seconds=0.2, say=lambda line: None)
    assert changed["stack"] == "updated"
    stack = deployed["clients"]["cloudformation"].describe_stacks(StackName=deployed["stack_name"])["Stacks"][0]
    assert {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}["MaxReceiveCount"] == "7"


def test_every_stage_in_the_deploy_config_names_parameters_the_template_has(deployed):
    stages = json.loads(deploy.CONFIG.read_text())["stages"]
    assert {"dev", "prod"} <= set(stages)
    for stage in stages:
        config = deploy.stage_config(stage)
        assert set(config["parameters"]) <= set(deployed["template"]["Parameters"]), stage
    assert deploy.stage_config("prod")["parameters"]["DatabaseDeletionProtection"] == "true"
    with pytest.raises(SystemExit, match="not in"):
        deploy.stage_config("staging-typo")


# ------------------------------------------------------------------ the edge and the customers' pool
def test_the_edge_rate_rules_replay_onto_the_apis_stage(deployed):
    """moto's CloudFormation has no WAFv2 resources: the template's web ACL and its association with the
    API's stage are replayed as the calls CloudFormation makes (botocore checks every property against
    AWS's API model on the way), and the stage then answers with that ACL."""
    template, params = deployed["template"], deployed["params"]
    ids = {"AWS::Partition": "aws", "AWS::Region": "us-east-1", "RestAPI": deployed["api_id"],
           "RestAPI.Stage": params["Stage"]}
    acl = resolve(template["Resources"]["ApiWebAcl"]["Properties"], params, ids)
    association = resolve(template["Resources"]["ApiWebAclAssociation"]["Properties"], params, ids)
    waf = _client("wafv2", deployed["endpoint"])
    created = waf.create_web_acl(**acl)["Summary"]
    try:
        assert association["WebACLArn"] == {"Fn::GetAtt": ["ApiWebAcl", "Arn"]}
        stage_arn = association["ResourceArn"]
        assert stage_arn == f"arn:aws:apigateway:us-east-1::/restapis/{deployed['api_id']}/stages/{params['Stage']}"
        waf.associate_web_acl(WebACLArn=created["ARN"], ResourceArn=stage_arn)
        guarding = waf.get_web_acl_for_resource(ResourceArn=stage_arn)["WebACL"]
        rules = {r["Name"]: r["Statement"]["RateBasedStatement"] for r in guarding["Rules"]}
        assert rules["requests-per-address"]["CustomKeys"] == [{"IP": {}}]
        assert rules["requests-per-token"]["CustomKeys"][0]["Header"]["Name"] == "authorization"
        assert (rules["requests-per-address"]["Limit"], rules["requests-per-token"]["Limit"]) == (
            params["EdgeRequestsPerAddress"], params["EdgeRequestsPerToken"])
        waf.disassociate_web_acl(ResourceArn=stage_arn)
    finally:
        waf.delete_web_acl(Name=created["Name"], Scope="REGIONAL", Id=created["Id"], LockToken=created["LockToken"])


def test_the_customer_pool_replays_with_verified_email_and_threat_protection(deployed):
    """The pool's properties as CreateUserPool takes them (moto's CloudFormation has no Cognito)."""
    props = resolve(deployed["template"]["Resources"]["CustomerUserPool"]["Properties"], deployed["params"], {})
    idp = _client("cognito-idp", deployed["endpoint"])
    pool = idp.create_user_pool(PoolName=props.pop("UserPoolName"), **{**props, "DeletionProtection": "INACTIVE"})
    try:
        described = idp.describe_user_pool(UserPoolId=pool["UserPool"]["Id"])["UserPool"]
        assert described["UserPoolTier"] == "PLUS"  # threat protection needs the Plus feature plan
        assert described["UserPoolAddOns"] == {"AdvancedSecurityMode": "ENFORCED"}
        assert described["AutoVerifiedAttributes"] == ["email"]
        assert described["UserAttributeUpdateSettings"] == {"AttributesRequireVerificationBeforeUpdate": ["email"]}
    finally:
        idp.delete_user_pool(UserPoolId=pool["UserPool"]["Id"])
