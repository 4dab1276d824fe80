"""TLS is verified and the serving functions hold row privileges only.

A throwaway MariaDB and a throwaway Redis serve TLS with certificates from a CA
of this test's own (the certificates name `localhost` only). The app must reach
them when told to trust that CA, and refuse them when the certificate comes
from another CA (the Amazon roots shipped in the package, or a rogue CA) or
names another host. The same MariaDB, migrated as root with an app user, shows
that the app works as that user and that the user cannot change the schema."""
import json
import uuid

import pymysql
import pytest
import redis
from chalice.test import Client

from chalicelib import bootstrap
from chalicelib.adapters.cache import RedisGateway
from chalicelib.adapters.db import Database
from chalicelib.adapters.migrate import migrate
from chalicelib.settings import AWS_CA_BUNDLE, MySQLTarget, Settings
from tests.conftest import ADMIN_KEY, DEV_KEY, session_settings
from scripts.servers import ThrowawayMariaDB, ThrowawayRedis
from tests.support.tls_certs import CertificateAuthority

APP_USER, APP_PASSWORD = "shop_app_t", "app-pw-" + uuid.uuid4().hex[:12]
REFUSED = ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "IP address mismatch", "hostname mismatch")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    base = tmp_path_factory.mktemp("pki")
    trusted = CertificateAuthority(base / "trusted", "shop-test-ca")
    rogue = CertificateAuthority(base / "rogue", "rogue-ca")
    return {"ca": trusted.cert_file, "rogue_ca": rogue.cert_file,
            "server": trusted.issue("server", dns_names=["localhost"]),
            "rogue_server": rogue.issue("rogue-server", dns_names=["localhost"])}


def _mariadb_serving(tmp_path_factory, name, ca, cert_and_key):
    cert, key = cert_and_key
    server = ThrowawayMariaDB(tmp_path_factory.mktemp(name), extra_args=[
        f"--ssl-ca={ca}", f"--ssl-cert={cert}", f"--ssl-key={key}"])
    server.start()
    return server


@pytest.fixture(scope="module")
def tls_mariadb(pki, tmp_path_factory):
    server = _mariadb_serving(tmp_path_factory, "tls-mariadb", pki["ca"], pki["server"])
    yield server
    server.close()


@pytest.fixture(scope="module")
def rogue_mariadb(pki, tmp_path_factory):
    server = _mariadb_serving(tmp_path_factory, "rogue-mariadb", pki["rogue_ca"], pki["rogue_server"])
    yield server
    server.close()


def target(server, ca_file, host="localhost", user="root", password="", database="shop_tls"):
    return MySQLTarget(host=host, port=server.port, user=user, password=password, database=database,
                       tls=True, ca_file=str(ca_file))


def connect(mysql_target):
    db = Database(mysql_target, connect_timeout=5)
    try:
        conn = db.connect(database=False)
    finally:
        db.close()
    return conn


def cipher(conn):
    with conn.cursor() as cur:
        cur.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
        return cur.fetchone()["Value"]


def assert_refused(call):
    with pytest.raises((pymysql.err.OperationalError, redis.exceptions.ConnectionError)) as caught:
        call()
    assert any(reason in str(caught.value) for reason in REFUSED), caught.value


# ------------------------------------------------------------------ MySQL
def test_mysql_with_the_trusted_ca_is_encrypted(tls_mariadb, pki):
    conn = connect(target(tls_mariadb, pki["ca"]))
    try:
        assert cipher(conn)  # empty when the session is not TLS
    finally:
        conn.close()


def test_mysql_certificate_from_another_ca_is_refused(rogue_mariadb, pki):
    assert_refused(lambda: connect(target(rogue_mariadb, pki["ca"])))


def test_mysql_certificate_for_another_host_is_refused(tls_mariadb, pki):
    # The certificate names localhost; 127.0.0.1 is the same server under a name it does not carry.
    assert_refused(lambda: connect(target(tls_mariadb, pki["ca"], host="127.0.0.1")))


def test_cloud_settings_trust_only_the_shipped_amazon_roots(tls_mariadb):
    settings = Settings({"STAGE": "prod", "DATABASE_URL": f"mysql://root:@localhost:{tls_mariadb.port}/shop",
                         "DATABASE_TLS": "true"})
    assert settings.database.ca_file == str(AWS_CA_BUNDLE)
    assert_refused(lambda: connect(settings.database))


def test_check_hostname_alone_verified_nothing(rogue_mariadb):
    """What the functions did before: PyMySQL given no CA accepts any certificate."""
    conn = pymysql.connect(host="localhost", port=rogue_mariadb.port, user="root", password="",
                           ssl={"check_hostname": True}, cursorclass=pymysql.cursors.DictCursor)
    try:
        assert cipher(conn)
    finally:
        conn.close()


# ------------------------------------------------------------------ Redis
@pytest.fixture(scope="module")
def tls_redis(pki):
    cert, key = pki["server"]
    server = ThrowawayRedis(tls=(cert, key, pki["ca"]))
    server.start()
    yield server
    server.close()


def redis_at(server, ca_file, host="localhost"):
    return RedisGateway(f"rediss://{host}:{server.port}/0", timeout=2, ca_file=str(ca_file))


def test_redis_with_the_trusted_ca_answers(tls_redis, pki):
    assert redis_at(tls_redis, pki["ca"]).client.ping()


@pytest.mark.parametrize("ca", ["rogue_ca", "amazon_roots"])
def test_redis_certificate_from_another_ca_is_refused(tls_redis, pki, ca):
    ca_file = AWS_CA_BUNDLE if ca == "amazon_roots" else pki[ca]
    assert_refused(lambda: redis_at(tls_redis, ca_file).client.ping())


def test_redis_certificate_for_another_host_is_refused(tls_redis, pki):
    assert_refused(lambda: redis_at(tls_redis, pki["ca"], host="127.0.0.1").client.ping())


# ------------------------------------------------------------------ database users
@pytest.fixture(scope="module")
def migrated_with_app_user(tls_mariadb, pki):
    root = Database(target(tls_mariadb, pki["ca"]))
    migrate(root, app_user=(APP_USER, APP_PASSWORD))
    root.close()
    return tls_mariadb


def as_app_user(server, pki, password=APP_PASSWORD):
    conn = connect(target(server, pki["ca"], user=APP_USER, password=password))
    conn.select_db("shop_tls")
    return conn


@pytest.mark.parametrize("statement", [
    "DROP TABLE products",
    "ALTER TABLE products ADD COLUMN x INT",
    "CREATE TABLE sneaky (id INT)",
    "TRUNCATE TABLE orders",
    f"GRANT ALL ON shop_tls.* TO '{APP_USER}'@'%'",
    "CREATE USER 'another'@'%'",
])
def test_app_user_cannot_change_schema_users_or_grants(migrated_with_app_user, pki, statement):
    conn = as_app_user(migrated_with_app_user, pki)
    try:
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError) as caught:
            cur.execute(statement)
        assert caught.value.args[0] in (1044, 1045, 1142, 1227), caught.value  # access denied, in its forms
    finally:
        conn.close()


def test_the_app_serves_as_the_app_user_over_verified_tls(migrated_with_app_user, pki, tls_redis, test_env):
    bootstrap.reset(**{**session_settings(test_env),
                       "DATABASE_URL": f"mysql://{APP_USER}:{APP_PASSWORD}@localhost:{migrated_with_app_user.port}/shop_tls",
                       "DATABASE_TLS": "true", "TLS_CA_FILE": str(pki["ca"]),
                       "REDIS_URL": f"rediss://localhost:{tls_redis.port}/0",
                       "REDIS_STATE_URL": f"rediss://localhost:{tls_redis.port}/1", "APP_RATE_LIMIT": "false"})
    from app import app

    try:
        with Client(app, stage_name="local") as client:
            created = client.http.post("/products", headers={"x-api-key": ADMIN_KEY, "content-type": "application/json"},
                                       body=json.dumps({"sku": "TLS-1", "name": "Encrypted kettle", "category": "kitchen",
                                                        "price_cents": 2500, "stock": 5}))
            assert created.status_code == 201, created.body
            product_id = json.loads(created.body)["product"]["id"]
            order = client.http.post("/orders/batch", headers={"x-api-key": DEV_KEY, "content-type": "application/json"},
                                     body=json.dumps({"orders": [{"client_order_id": "tls-1", "user_id": 7, "items": [
                                         {"product_id": product_id, "quantity": 2}]}]}))
            assert json.loads(order.body).get("summary") == {"created": 1, "failed": 0}, order.body
            found = client.http.get("/products/search?q=kettle", headers={"x-api-key": DEV_KEY})
            assert found.status_code == 200 and [p["id"] for p in json.loads(found.body)["items"]] == [product_id]
            product = json.loads(client.http.get(f"/products/{product_id}", headers={"x-api-key": DEV_KEY}).body)
            assert product["product"]["stock"] == 3
    finally:
        bootstrap.reset()


def test_migrate_again_sets_the_password_the_secret_now_holds(migrated_with_app_user, pki):
    """After a rotation or a restore, the next deploy's migrate brings the user back to the secret."""
    root = Database(target(migrated_with_app_user, pki["ca"]))
    new_password = "rotated-" + uuid.uuid4().hex[:12]
    try:
        assert migrate(root, app_user=(APP_USER, new_password)) == []  # no migration left, user still updated
        as_app_user(migrated_with_app_user, pki, new_password).close()
        with pytest.raises(pymysql.err.OperationalError):
            as_app_user(migrated_with_app_user, pki, APP_PASSWORD)
    finally:
        migrate(root, app_user=(APP_USER, APP_PASSWORD))
        root.close()


def test_migrate_refuses_to_run_while_another_holds_the_lock(migrated_with_app_user, pki, monkeypatch):
    """Two deploys at once: the second waits for the lock and, rather than
    migrating alongside the first when the wait runs out, fails."""
    from chalicelib.adapters import migrate as migrations

    holder = connect(target(migrated_with_app_user, pki["ca"]))
    root = Database(target(migrated_with_app_user, pki["ca"]))
    monkeypatch.setattr(migrations, "LOCK_WAIT_SECONDS", 1)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT GET_LOCK('migrate:shop_tls', 0) AS ok")
            assert cur.fetchone()["ok"] == 1
        with pytest.raises(migrations.MigrationLockBusy):
            migrate(root)
    finally:
        holder.close()
        root.close()
