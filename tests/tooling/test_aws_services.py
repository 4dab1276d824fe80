"""What the project uses, or is about to use, of the local AWS endpoint besides
SQS, over real connections: SNS fan-out to SQS, SES with the sent mail read
back through LocalStack's GET /_aws/ses, Cognito user pools (a user signs in
and the ID token verifies against the pool's /.well-known/jwks.json), and
the CloudFormation + S3 + Lambda basics a deploy needs."""
import io
import json
import uuid
import zipfile

import boto3
import pytest
import requests
from botocore.config import Config
from joserfc import jwt
from joserfc.jwk import KeySet

from scripts import localstack


@pytest.fixture(scope="module")
def client(aws_endpoint):
    def make(service):
        return boto3.client(service, endpoint_url=aws_endpoint.url, region_name=localstack.REGION,
                            aws_access_key_id="test", aws_secret_access_key="test",
                            config=Config(retries={"max_attempts": 2}))
    return make


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_sns_topic_delivers_to_a_subscribed_queue(client):
    sns, sqs = client("sns"), client("sqs")
    topic = sns.create_topic(Name=unique("shop-test-topic"))["TopicArn"]
    queue = sqs.create_queue(QueueName=unique("shop-test-sns"))["QueueUrl"]
    try:
        arn = localstack.queue_arn(sqs, queue)
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn, Attributes={"RawMessageDelivery": "true"})
        sns.publish(TopicArn=topic, Message=json.dumps({"order_id": 7}))
        messages = sqs.receive_message(QueueUrl=queue, WaitTimeSeconds=5).get("Messages", [])
        assert [json.loads(m["Body"]) for m in messages] == [{"order_id": 7}]
    finally:
        sns.delete_topic(TopicArn=topic)
        sqs.delete_queue(QueueUrl=queue)


def test_ses_sent_mail_is_readable_from_the_mailbox(client, aws_endpoint):
    ses = client("ses")
    sender = f"{unique('shop')}@example.com"
    ses.verify_email_identity(EmailAddress=sender)
    message_id = ses.send_email(Source=sender, Destination={"ToAddresses": ["buyer@example.com"]}, Message={
        "Subject": {"Data": "Order 7 confirmed"}, "Body": {"Text": {"Data": "Thank you for your order."}}})["MessageId"]
    mailbox = requests.get(f"{aws_endpoint.url}/_aws/ses", params={"email": sender}, timeout=10).json()["messages"]
    assert [(m["Id"], m["Subject"], m["Body"]["text_part"], m["Destination"]["ToAddresses"]) for m in mailbox] == [
        (message_id, "Order 7 confirmed", "Thank you for your order.", ["buyer@example.com"])]


def test_unverified_sender_is_refused(client):
    with pytest.raises(client("ses").exceptions.MessageRejected):
        client("ses").send_email(Source=f"{unique('nobody')}@example.com", Destination={"ToAddresses": ["a@b.c"]},
                                 Message={"Subject": {"Data": "x"}, "Body": {"Text": {"Data": "x"}}})


def test_cognito_id_token_verifies_against_the_pool_jwks(client, aws_endpoint):
    idp = client("cognito-idp")
    pool = idp.create_user_pool(PoolName=unique("shop-test-pool"), UsernameAttributes=["email"])["UserPool"]["Id"]
    try:
        app = idp.create_user_pool_client(UserPoolId=pool, ClientName="shop-web", ExplicitAuthFlows=[
            "ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"])["UserPoolClient"]["ClientId"]
        idp.admin_create_user(UserPoolId=pool, Username="buyer@example.com", MessageAction="SUPPRESS",
                              UserAttributes=[{"Name": "email", "Value": "buyer@example.com"}])
        idp.admin_set_user_password(UserPoolId=pool, Username="buyer@example.com", Password="Secret-pass-1",
                                    Permanent=True)
        tokens = idp.initiate_auth(ClientId=app, AuthFlow="USER_PASSWORD_AUTH", AuthParameters={
            "USERNAME": "buyer@example.com", "PASSWORD": "Secret-pass-1"})["AuthenticationResult"]

        jwks = requests.get(f"{aws_endpoint.url}/{pool}/.well-known/jwks.json", timeout=10).json()
        token = jwt.decode(tokens["IdToken"], KeySet.import_key_set(jwks), algorithms=["RS256"])
        assert token.claims["aud"] == app
        assert token.claims["token_use"] == "id"
        assert token.claims["iss"].endswith(f"/{pool}")
        assert token.claims["email"] == "buyer@example.com"
        with pytest.raises(idp.exceptions.NotAuthorizedException):
            idp.initiate_auth(ClientId=app, AuthFlow="USER_PASSWORD_AUTH", AuthParameters={
                "USERNAME": "buyer@example.com", "PASSWORD": "wrong-pass-1"})
    finally:
        idp.delete_user_pool(UserPoolId=pool)


def test_tampered_token_does_not_verify(client, aws_endpoint):
    idp = client("cognito-idp")
    pool = idp.create_user_pool(PoolName=unique("shop-test-pool"))["UserPool"]["Id"]
    try:
        app = idp.create_user_pool_client(UserPoolId=pool, ClientName="shop-web",
                                          ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])["UserPoolClient"]["ClientId"]
        idp.admin_create_user(UserPoolId=pool, Username="u1", MessageAction="SUPPRESS")
        idp.admin_set_user_password(UserPoolId=pool, Username="u1", Password="Secret-pass-1", Permanent=True)
        token = idp.initiate_auth(ClientId=app, AuthFlow="USER_PASSWORD_AUTH", AuthParameters={
            "USERNAME": "u1", "PASSWORD": "Secret-pass-1"})["AuthenticationResult"]["AccessToken"]
        header, payload, signature = token.split(".")
        forged = ".".join([header, payload, signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")])
        jwks = requests.get(f"{aws_endpoint.url}/{pool}/.well-known/jwks.json", timeout=10).json()
        with pytest.raises(Exception, match="(?i)signature"):
            jwt.decode(forged, KeySet.import_key_set(jwks), algorithms=["RS256"])
    finally:
        idp.delete_user_pool(UserPoolId=pool)


def _function_zip():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        # A fixed date: the same bytes every call, so the stored copy can be compared.
        zf.writestr(zipfile.ZipInfo("handler.py", date_time=(2026, 1, 1, 0, 0, 0)),
                    "def handle(event, context):\n    return {'ok': True}\n")
    return buffer.getvalue()


def test_cloudformation_stack_with_s3_and_lambda(client):
    s3, cfn, lam = client("s3"), client("cloudformation"), client("lambda")
    bucket, stack, name = unique("shop-test-artifacts"), unique("shop-test-stack"), unique("shop-test-fn")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="fn.zip", Body=_function_zip())
    template = {"Resources": {
        "Role": {"Type": "AWS::IAM::Role", "Properties": {"AssumeRolePolicyDocument": {
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "sts:AssumeRole",
                                                    "Principal": {"Service": "lambda.amazonaws.com"}}]}}},
        "Queue": {"Type": "AWS::SQS::Queue", "Properties": {"QueueName": f"{stack}-queue"}},
        "Function": {"Type": "AWS::Lambda::Function", "Properties": {
            "FunctionName": name, "Runtime": "python3.11", "Handler": "handler.handle",
            "Role": {"Fn::GetAtt": ["Role", "Arn"]}, "Code": {"S3Bucket": bucket, "S3Key": "fn.zip"}}},
    }}
    try:
        cfn.create_stack(StackName=stack, TemplateBody=json.dumps(template), Capabilities=["CAPABILITY_IAM"])
        cfn.get_waiter("stack_create_complete").wait(StackName=stack, WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        resources = {r["LogicalResourceId"] for r in cfn.describe_stack_resources(StackName=stack)["StackResources"]}
        assert resources == {"Role", "Queue", "Function"}
        assert lam.get_function(FunctionName=name)["Configuration"]["Runtime"] == "python3.11"
        assert client("sqs").get_queue_url(QueueName=f"{stack}-queue")["QueueUrl"]
        assert s3.get_object(Bucket=bucket, Key="fn.zip")["Body"].read() == _function_zip()
    finally:
        cfn.delete_stack(StackName=stack)
        s3.delete_object(Bucket=bucket, Key="fn.zip")
        s3.delete_bucket(Bucket=bucket)
