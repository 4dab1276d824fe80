"""TLS for the connections the functions make (MySQL through RDS Proxy, Redis
on ElastiCache): the peer's certificate must chain to the CA file and name the
host. PyMySQL given only `check_hostname` (what we had) verifies nothing."""
import functools
import ssl


@functools.lru_cache(maxsize=4)
def client_context(ca_file):
    context = ssl.create_default_context(cafile=ca_file)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
