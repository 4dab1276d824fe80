"""Email through SES (the local endpoint's SES locally, which keeps every sent
message at GET /_aws/ses)."""
import threading

from chalicelib.adapters.queues import aws_client


class SesMailer:
    def __init__(self, endpoint_url, region, sender):
        self._args = ("ses", endpoint_url, region)
        self._client = None
        self._lock = threading.Lock()
        self.sender = sender

    @property
    def client(self):
        with self._lock:
            if self._client is None:
                self._client = aws_client(*self._args)
        return self._client

    def send(self, to, subject, text):
        """SES's message id; raises (botocore) when SES refuses or cannot be reached."""
        return self.client.send_email(
            Source=self.sender, Destination={"ToAddresses": [to]},
            Message={"Subject": {"Data": subject, "Charset": "UTF-8"},
                     "Body": {"Text": {"Data": text, "Charset": "UTF-8"}}})["MessageId"]
