"""The local AWS endpoint (docs/design.md section 5): moto's server application
with scripts/moto_patches.py applied, served by waitress, plus LocalStack's
`GET /_aws/ses` so that tests read sent mail the same way from either.
`scripts/localstack.py` starts it when nothing answers on the endpoint port.

    python scripts/aws_endpoint.py -H 127.0.0.1 -p 4566

Measured with bench/endpoint (docs/benchmarks.md): waitress answers
SQS calls faster than werkzeug's threaded development server that
`python -m moto.server` uses (a thread per connection)."""
import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from urllib.parse import parse_qs

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

log = logging.getLogger("aws_endpoint")


def sent_emails(email=None, message_id=None):
    """Every message moto's SES kept, in LocalStack's /_aws/ses shape. moto keeps one
    body per message (the HTML part when there is one), given here as text_part."""
    from moto.ses.models import RawMessage, TemplateMessage, ses_backends

    out = []
    for regions in ses_backends.values():
        for region, backend in regions.items():
            for message in backend.sent_messages:
                if (email and message.source != email) or (message_id and getattr(message, "id", None) != message_id):
                    continue
                item = {"Id": getattr(message, "id", None), "Region": region, "Source": message.source}
                if isinstance(message, RawMessage):
                    item.update(RawData=message.raw_data, Destination={"ToAddresses": list(message.destinations)})
                elif isinstance(message, TemplateMessage):
                    item.update(Template=message.template, TemplateData=message.template_data,
                                Destination=message.destinations)
                elif hasattr(message, "subject"):
                    item.update(Subject=message.subject, Body={"text_part": message.body, "html_part": None},
                                Destination=message.destinations)
                else:
                    continue  # bulk templated sends: not used here
                out.append(item)
    return out


def with_ses_mailbox(app):
    def application(environ, start_response):
        if environ.get("PATH_INFO") == "/_aws/ses" and environ.get("REQUEST_METHOD") == "GET":
            query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
            body = json.dumps({"messages": sent_emails(query.get("email"), query.get("id"))}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        return app(environ, start_response)

    return application


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, default=4566)
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("MOTO_PORT", str(args.port))  # moto builds some URLs (SQS queue URLs) from it

    from scripts import moto_patches

    applied, _ = moto_patches.apply()
    log.info("moto speed-ups applied: %s", ", ".join(applied) or "none")
    import waitress
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    # A request that arrives while another thread runs waits up to the GIL's
    # switch interval (5 ms by default) before it is even read: 1 ms gave a
    # sequential sender ~8% more messages/s in A/B runs of bench/endpoint.
    sys.setswitchinterval(0.001)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log.info("serving on http://%s:%s", args.host, args.port)
    # Every long-polling consumer holds a thread while it waits (bench/ingest runs
    # 16), and every boto3 client keeps its connections open: room for both.
    waitress.serve(with_ses_mailbox(DomainDispatcherApplication(create_backend_app)), host=args.host, port=args.port,
                   threads=64, connection_limit=1000, _quiet=True)


if __name__ == "__main__":
    sys.exit(main())
