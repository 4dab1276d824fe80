"""`chalice local --stage <stage>` whose stage variables do not overwrite the
process environment: `.chalice/config.json` holds the defaults, the
environment wins (chalicelib.settings applies that precedence itself)."""
import argparse
import json
import logging
import os
import sys

from chalice import local as chalice_local
from chalice.cli import factory as chalice_factory
from chalice.cli import run_local_server

# socketserver's default listen backlog of 5 turns a burst of clients into
# SYN retries of a second or more; API Gateway has no such queue.
chalice_local.ThreadedHTTPServer.request_queue_size = 1024
# Headers and body go out in separate writes; with Nagle on, keep-alive clients
# wait for a delayed ACK (~40 ms) on every request.
chalice_local.ChaliceRequestHandler.disable_nagle_algorithm = True

def _unknown_route_in_contract_shape(handle_request):
    """API Gateway's own 403 for a path no route has is shaped by the deployed
    Gateway Responses (scripts/package.py); chalice local's gets the same body."""

    def handle(self, method, path, headers, body):
        try:
            return handle_request(self, method, path, headers, body)
        except chalice_local.ForbiddenError as exc:
            request_id = exc.headers.get("x-amzn-RequestId", "")
            shaped = {"error": {"code": "FORBIDDEN", "message": "No such route, or a valid x-api-key header is required.",
                                "request_id": request_id}}
            raise chalice_local.ForbiddenError({**exc.headers, "Content-Type": "application/json",
                                                "X-Request-Id": request_id}, json.dumps(shaped).encode()) from None

    return handle


chalice_local.LocalGateway.handle_request = _unknown_route_in_contract_shape(chalice_local.LocalGateway.handle_request)


def _with_the_peers_address(generic_handle):
    """chalice local puts 127.0.0.1 in every event's requestContext.identity.sourceIp; API Gateway
    puts the caller's address, which the limits per person of an app's key count by. Each
    connection has a gateway of its own, so its converter may carry that connection's peer."""

    def handle(self):
        self.local_gateway.event_converter.LOCAL_SOURCE_IP = self.client_address[0]
        return generic_handle(self)

    return handle


_handle_with_peer = _with_the_peers_address(chalice_local.ChaliceRequestHandler._generic_handle)
for _method in ("GET", "PUT", "POST", "HEAD", "DELETE", "PATCH", "OPTIONS"):
    setattr(chalice_local.ChaliceRequestHandler, f"do_{_method}", _handle_with_peer)

PROJECT_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--stage", default="local")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    args = parser.parse_args()
    os.environ.setdefault("STAGE", args.stage)
    os.environ["AWS_CHALICE_CLI_MODE"] = "true"
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
    # A copy: Chalice writes the stage variables into it, not into os.environ.
    cli_factory = chalice_factory.CLIFactory(PROJECT_DIR, environ=dict(os.environ))
    run_local_server(cli_factory, args.host, args.port, args.stage)


if __name__ == "__main__":
    main()
