"""Who a person is, for the limits of a key that everyone with the app shares
(a plan with per-person limits, chalicelib/usage_plans.json). On the customer
routes a person is the customer of the verified token (issuer and subject);
elsewhere the app verifies no token (in AWS only the authorizer of the
customer routes does), so a person is the caller's network address: an IPv4
address, or an IPv6 /64 (one subscriber's network: an address of its own per
request costs a caller nothing inside it). Pure."""
import hashlib
import ipaddress
import json


def customer(issuer, subject):
    digest = hashlib.sha256(json.dumps([issuer, subject]).encode()).hexdigest()[:32]
    return f"customer:{digest}"


def address(source_ip):
    """`source_ip`: API Gateway's requestContext.identity.sourceIp (the peer chalice local saw)."""
    try:
        ip = ipaddress.ip_address(str(source_ip or "").strip())
    except ValueError:
        return "address:unknown"  # one bucket for every caller without a usable address
    if ip.version == 6 and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.version == 6:
        return f"address:{ipaddress.ip_network((ip, 64), strict=False)}"
    return f"address:{ip}"
