"""Write chalicelib/certs/aws-trust.pem: the CAs that RDS Proxy and ElastiCache
certificates chain to (Amazon Trust Services: Amazon Root CA 1-4, and the
Starfield Services root that cross-signs them), taken from certifi's copy of
Mozilla's root store so the bundle is reproducible from the hashed lock file.

    .venv/bin/python scripts/aws_ca_bundle.py          # rewrite the bundle
    .venv/bin/python scripts/aws_ca_bundle.py --check  # exit 1 if it differs

The functions verify every TLS connection (MySQL through RDS Proxy, Redis)
against this file and nothing else; a direct connection to the RDS instance
would need RDS's own regional bundle instead (we never make one)."""
import argparse
import re
import sys
import warnings
from pathlib import Path

BUNDLE = Path(__file__).resolve().parent.parent / "chalicelib" / "certs" / "aws-trust.pem"
SUBJECTS = (
    "CN=Amazon Root CA 1,O=Amazon,C=US",
    "CN=Amazon Root CA 2,O=Amazon,C=US",
    "CN=Amazon Root CA 3,O=Amazon,C=US",
    "CN=Amazon Root CA 4,O=Amazon,C=US",
    "CN=Starfield Services Root Certificate Authority - G2,O=Starfield Technologies\\, Inc.,"
    "L=Scottsdale,ST=Arizona,C=US",
)


def bundle_text():
    import certifi
    from cryptography import x509

    found = {}
    for pem in re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----\n",
                          Path(certifi.where()).read_text(), re.S):
        with warnings.catch_warnings():  # certifi holds a root or two with a non-positive serial
            warnings.simplefilter("ignore")
            subject = x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()
        if subject in SUBJECTS:
            found[subject] = pem
    missing = [s for s in SUBJECTS if s not in found]
    if missing:
        raise SystemExit(f"certifi {certifi.__version__} lacks {missing}")
    return "".join(f"# {subject}\n{found[subject]}" for subject in SUBJECTS)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    text = bundle_text()
    if args.check:
        if BUNDLE.read_text() != text:
            print(f"{BUNDLE} differs from certifi's Amazon roots; run scripts/aws_ca_bundle.py", file=sys.stderr)
            return 1
        return 0
    BUNDLE.write_text(text)
    print(f"wrote {BUNDLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
