"""scripts/deploy.py's decisions that need no AWS: what a failed migrate or a
stack in a state that cannot take a change set does to the deploy. (The deploy
itself runs against the local AWS endpoint in tests/tooling/test_infra_deploy.py.)"""
import io
import json

import pytest

from scripts import deploy


class FakeLambda:
    def __init__(self, payload, function_error=None):
        self.payload, self.function_error, self.calls = payload, function_error, []

    def invoke(self, **kwargs):
        self.calls.append(kwargs)
        response = {"StatusCode": 200, "Payload": io.BytesIO(json.dumps(self.payload).encode())}
        if self.function_error:
            response["FunctionError"] = self.function_error
        return response


class FakeCloudFormation:
    def __init__(self, status):
        self.status = status

    def describe_stack_resource(self, StackName, LogicalResourceId):
        return {"StackResourceDetail": {"PhysicalResourceId": f"{StackName}-{LogicalResourceId}-x1"}}

    def describe_stacks(self, StackName):
        return {"Stacks": [{"StackStatus": self.status}]}


def test_migrate_result_is_returned_from_the_stacks_own_function():
    lam = FakeLambda({"applied": ["0005_x.sql"]})
    assert deploy.invoke_migrate(FakeCloudFormation("UPDATE_COMPLETE"), lam, "shop-dev") == {"applied": ["0005_x.sql"]}
    assert lam.calls[0]["FunctionName"] == "shop-dev-Migrate-x1"
    assert lam.calls[0]["InvocationType"] == "RequestResponse"


def test_a_migrate_that_raised_fails_the_deploy_with_its_error():
    lam = FakeLambda({"errorType": "MigrationLockBusy", "errorMessage": "another migration"}, "Unhandled")
    with pytest.raises(deploy.DeployFailed, match="MigrationLockBusy"):
        deploy.invoke_migrate(FakeCloudFormation("UPDATE_COMPLETE"), lam, "shop-dev")


@pytest.mark.parametrize("status, reason", [("ROLLBACK_COMPLETE", "delete it"),
                                            ("UPDATE_IN_PROGRESS", "another deploy is running")])
def test_a_stack_that_cannot_take_a_change_set_is_refused(status, reason):
    with pytest.raises(deploy.DeployFailed, match=reason):
        deploy.apply_change_set(FakeCloudFormation(status), "shop-dev", "https://b.s3/t.json", {})
