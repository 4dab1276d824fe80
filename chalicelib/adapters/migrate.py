"""Versioned schema migrations: ordered SQL files, each applied once and
recorded in `schema_migrations`. Safe to run again and from several processes."""
import logging
import re
from pathlib import Path

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
log = logging.getLogger(__name__)


def _statements(sql):
    sql = re.sub(r"^\s*--.*$", "", sql, flags=re.MULTILINE)
    return [s.strip() for s in sql.split(";") if s.strip()]


def migration_files():
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


# What the serving functions may do: rows, not schema, users or grants.
APP_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"
LOCK_WAIT_SECONDS = 60


class MigrationLockBusy(RuntimeError):
    pass


def ensure_app_user(cur, database, user, password):
    """The application's user with the secret's password and row privileges only.
    Run again (each deploy, after a rotation) it brings password and grants back
    to the secret's; rotation's `_clone` twin copies these grants."""
    cur.execute("CREATE USER IF NOT EXISTS %s@'%%' IDENTIFIED BY %s", (user, password))
    cur.execute("ALTER USER %s@'%%' IDENTIFIED BY %s", (user, password))
    cur.execute(f"GRANT {APP_PRIVILEGES} ON `{database}`.* TO %s@'%%'", (user,))


def migrate(db, app_user=None):
    """Create the database if needed, apply pending migrations and, given
    app_user=(user, password), set up the application's user; returns the
    names applied."""
    name = db.target.database
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"unsafe database name {name!r}")
    admin = db.connect(database=False)
    try:
        with admin.cursor() as cur:
            cur.execute(f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
    finally:
        admin.close()
    conn = db.connect()
    applied_now = []
    try:
        with conn.cursor() as cur:
            # Serialises concurrent runners (never used on the request path).
            cur.execute("SELECT GET_LOCK(%s, %s) AS ok", (f"migrate:{name}", LOCK_WAIT_SECONDS))
            if cur.fetchone()["ok"] != 1:
                raise MigrationLockBusy(f"another migration of {name} held the lock for {LOCK_WAIT_SECONDS} s")
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name VARCHAR(255) NOT NULL PRIMARY KEY,"
                " applied_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))"
            )
            cur.execute("SELECT name FROM schema_migrations")
            done = {row["name"] for row in cur.fetchall()}
            for path in migration_files():
                if path.name in done:
                    continue
                for statement in _statements(path.read_text()):
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations (name) VALUES (%s)", (path.name,))
                applied_now.append(path.name)
                log.info("applied migration %s", path.name)
            if app_user:
                ensure_app_user(cur, name, *app_user)
            cur.execute("SELECT RELEASE_LOCK(%s)", (f"migrate:{name}",))
    finally:
        conn.close()
    return applied_now
