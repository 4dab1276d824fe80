"""Email through SES (the local endpoint's SES locally, which keeps every sent
message at GET /_aws/ses) and customers' addresses from their Cognito identity."""
import threading

from chalicelib.adapters.queues import aws_client


class _Lazy:
    def __init__(self, service, endpoint_url, region):
        self._args = (service, endpoint_url, region)
        self._client = None
        self._lock = threading.Lock()

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = aws_client(*self._args)
        return self._client


class SesMailer(_Lazy):
    def __init__(self, endpoint_url, region, sender):
        super().__init__("ses", endpoint_url, region)
        self.sender = sender

    def send(self, to, subject, text):
        """SES's message id; raises (botocore) when SES refuses or cannot be reached."""
        return self.client.send_email(
            Source=self.sender, Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": subject, "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}})["MessageId"]


class CognitoEmails(_Lazy):
    """A customer's email from the user pool that issued their token."""

    def __init__(self, endpoint_url, region):
        super().__init__("cognito-idp", endpoint_url, region)

    def email(self, issuer, subject):
        """The user's email, or None (no such user any more, or no email attribute)."""
        pool_id = issuer.rstrip("/").rsplit("/", 1)[-1]
        # `sub` is the token's subject; ListUsers' filter is the lookup Cognito offers by it.
        users = self.client.list_users(UserPoolId=pool_id, Filter=f'sub = "{subject.replace(chr(34), "")}"', Limit=1)["Users"]
        for user in users:
            attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
            if attributes.get("email"):
                return attributes["email"]
        return None
