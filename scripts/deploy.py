"""Deploy a stage: package, upload, one CloudFormation change set, then the migrations.

    make deploy STAGE=dev            (= .venv/bin/python scripts/deploy.py --stage dev)

1. `scripts/package.py --stage <stage>` builds build/<stage>/sam.json and deployment.zip.
2. Both go to the artifact bucket under content hashes (an unchanged package
   uploads nothing); each function's CodeUri points at the zip there.
3. A change set (CREATE the first time, UPDATE after) with the stage's
   parameters from infra/deploy.json is created, shown and executed; the
   command waits for the stack and prints the failed events if it rolls back.
   A template with nothing to change is not an error.
4. The packaged `migrate` function is invoked and must succeed: it applies the
   pending migrations as the master user (serialised by a MySQL lock, each
   recorded, so running it again applies nothing) and sets up the app user.
   A failed migration fails the deploy (the stack is already updated: the
   functions run the new code against the old schema until it is fixed, so
   migrations must stay backward compatible, see docs/design.md).
"""
import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
CONFIG = PROJECT_DIR / "infra" / "deploy.json"
if str(PROJECT_DIR) not in sys.path:
    sys.path.insert(0, str(PROJECT_DIR))

CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"]
MIGRATE_FUNCTION = "Migrate"  # the migrate function's logical id in the packaged template
NO_CHANGES = ("didn't contain changes", "No updates are to be performed")


class DeployFailed(SystemExit):
    pass


def stage_config(stage, path=CONFIG):
    stages = json.loads(Path(path).read_text())["stages"]
    if stage not in stages:
        raise DeployFailed(f"stage {stage!r} is not in {path} (stages: {', '.join(sorted(stages))})")
    config = stages[stage]
    return {"stack_name": config["stack_name"], "region": config["region"],
            "artifact_bucket": config.get("artifact_bucket"), "parameters": dict(config.get("parameters", {}))}


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def ensure_bucket(s3, bucket, region):
    """A private, encrypted, versioned bucket for the deploy artifacts."""
    from botocore.exceptions import ClientError

    try:
        s3.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
    kwargs = {} if region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=bucket, **kwargs)
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]})
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})


def _put_once(s3, bucket, key, body):
    from botocore.exceptions import ClientError

    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError:
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def upload(s3, bucket, region, stack_name, template, zip_path):
    """Put the zip and the template (with CodeUri pointing at the zip) in the
    bucket; returns the template's URL for CloudFormation."""
    code = Path(zip_path).read_bytes()
    code_key = f"{stack_name}/code-{_sha256(code)}.zip"
    _put_once(s3, bucket, code_key, code)
    for resource in template["Resources"].values():
        if resource["Type"] == "AWS::Serverless::Function":
            resource["Properties"]["CodeUri"] = {"Bucket": bucket, "Key": code_key}
    body = json.dumps(template, indent=1, sort_keys=True).encode()
    template_key = f"{stack_name}/template-{_sha256(body)}.json"
    _put_once(s3, bucket, template_key, body)
    return f"https://{bucket}.s3.{region}.amazonaws.com/{template_key}"


def _stack_status(cfn, stack_name):
    from botocore.exceptions import ClientError

    try:
        return cfn.describe_stacks(StackName=stack_name)["Stacks"][0]["StackStatus"]
    except ClientError as exc:
        if "does not exist" in str(exc):
            return None
        raise


def _wait(cfn, stack_name, poll_seconds, timeout_seconds):
    deadline = time.monotonic() + timeout_seconds
    while True:
        status = _stack_status(cfn, stack_name)
        if status is None or not status.endswith("_IN_PROGRESS"):
            return status
        if time.monotonic() > deadline:
            raise DeployFailed(f"{stack_name} still {status} after {timeout_seconds} s")
        time.sleep(poll_seconds)


def _failure_events(cfn, stack_name, limit=10):
    events = cfn.describe_stack_events(StackName=stack_name)["StackEvents"]
    return [f"  {e['LogicalResourceId']} {e['ResourceStatus']}: {e.get('ResourceStatusReason', '')}"
            for e in events if e["ResourceStatus"].endswith("_FAILED")][:limit]


def apply_change_set(cfn, stack_name, template_url, parameters, poll_seconds=15, timeout_seconds=3600,
                     say=print):
    """Create or update the stack through one change set; returns 'created',
    'updated' or 'unchanged'."""
    status = _stack_status(cfn, stack_name)
    if status == "ROLLBACK_COMPLETE":  # a first create that failed: it can only be deleted
        raise DeployFailed(f"{stack_name} is ROLLBACK_COMPLETE from a failed first create; delete it, then deploy")
    if status and status.endswith("_IN_PROGRESS"):
        raise DeployFailed(f"{stack_name} is {status}: another deploy is running")
    kind = "UPDATE" if status else "CREATE"
    name = f"deploy-{time.strftime('%Y%m%d-%H%M%S')}"
    cfn.create_change_set(StackName=stack_name, ChangeSetName=name, ChangeSetType=kind, TemplateURL=template_url,
                          Capabilities=CAPABILITIES,
                          Parameters=[{"ParameterKey": k, "ParameterValue": str(v)} for k, v in parameters.items()])
    deadline = time.monotonic() + timeout_seconds
    while True:
        change_set = cfn.describe_change_set(StackName=stack_name, ChangeSetName=name)
        if change_set["Status"] in ("CREATE_COMPLETE", "FAILED"):
            break
        if time.monotonic() > deadline:
            raise DeployFailed(f"change set {name} still {change_set['Status']}")
        time.sleep(min(poll_seconds, 5))
    if change_set["Status"] == "FAILED":
        reason = change_set.get("StatusReason", "")
        if any(text in reason for text in NO_CHANGES):
            cfn.delete_change_set(StackName=stack_name, ChangeSetName=name)
            say(f"{stack_name}: no changes")
            return "unchanged"
        raise DeployFailed(f"change set {name} failed: {reason}")
    for change in change_set.get("Changes", []):
        rc = change["ResourceChange"]
        say(f"  {rc['Action']:<7} {rc['LogicalResourceId']} ({rc['ResourceType']})"
            + (" REPLACEMENT" if rc.get("Replacement") == "True" else ""))
    cfn.execute_change_set(StackName=stack_name, ChangeSetName=name)
    final = _wait(cfn, stack_name, poll_seconds, timeout_seconds)
    if final not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise DeployFailed("\n".join([f"{stack_name} ended {final}:", *_failure_events(cfn, stack_name)]))
    return "created" if kind == "CREATE" else "updated"


def invoke_migrate(cfn, lambda_client, stack_name):
    """Run the stack's migrate function synchronously; its result, or DeployFailed."""
    function = cfn.describe_stack_resource(StackName=stack_name, LogicalResourceId=MIGRATE_FUNCTION)
    response = lambda_client.invoke(FunctionName=function["StackResourceDetail"]["PhysicalResourceId"],
                                     InvocationType="RequestResponse", Payload=b"{}")
    payload = json.loads(response["Payload"].read() or b"null")
    if response.get("FunctionError"):
        raise DeployFailed(f"migrate failed: {json.dumps(payload)}")
    return payload


def deploy(config, template, zip_path, clients, migrate=None, poll_seconds=15, say=print):
    """The whole deploy against `clients` (s3, cloudformation, lambda, sts).
    `migrate(stack_name)` runs the migrations (default: invoke the function)."""
    bucket = config["artifact_bucket"] or "{}-artifacts-{}-{}".format(
        config["stack_name"], clients["sts"].get_caller_identity()["Account"], config["region"])
    ensure_bucket(clients["s3"], bucket, config["region"])
    template_url = upload(clients["s3"], bucket, config["region"], config["stack_name"], template, zip_path)
    say(f"{config['stack_name']}: template {template_url}")
    outcome = apply_change_set(clients["cloudformation"], config["stack_name"], template_url, config["parameters"],
                               poll_seconds=poll_seconds, say=say)
    migrate = migrate or (lambda stack: invoke_migrate(clients["cloudformation"], clients["lambda"], stack))
    result = migrate(config["stack_name"])
    say(f"{config['stack_name']}: stack {outcome}; migrations applied: {(result or {}).get('applied')}")
    return {"stack": outcome, "migrate": result, "bucket": bucket, "template_url": template_url}


def print_outputs(cfn, stack_name):
    stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
    for output in stack.get("Outputs", []):
        print(f"  {output['OutputKey']}: {output['OutputValue']}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", required=True)
    parser.add_argument("--config", default=str(CONFIG))
    parser.add_argument("--out", default=None, help="package directory (default build/<stage>)")
    args = parser.parse_args(argv)
    import boto3
    from botocore.config import Config

    from scripts import package

    from botocore.exceptions import BotoCoreError, ClientError

    config = stage_config(args.stage, args.config)
    # The migrate invocation waits for the function (up to its 15 minute timeout).
    clients = {name: boto3.client(name, region_name=config["region"],
                                  config=Config(read_timeout=960 if name == "lambda" else 60))
               for name in ("s3", "cloudformation", "lambda", "sts")}
    try:
        identity = clients["sts"].get_caller_identity()
    except (BotoCoreError, ClientError) as exc:
        raise DeployFailed(f"no usable AWS credentials ({exc}); configure a profile or SSO, then retry") from None
    print(f"deploying {config['stack_name']} to account {identity['Account']} in {config['region']} "
          f"as {identity['Arn']}")
    out = Path(args.out or PROJECT_DIR / "build" / args.stage)
    template_path = package.package(stage=args.stage, out=out)
    deploy(config, json.loads(template_path.read_text()), out / "deployment.zip", clients)
    print_outputs(clients["cloudformation"], config["stack_name"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
