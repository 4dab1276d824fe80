"""The `migrate` Lambda: applies the schema migrations that ship in the package.
The deploy invokes it once the stack is up; running it again applies nothing
(each migration is recorded) and concurrent runs are serialised (GET_LOCK)."""
from chalicelib import bootstrap
from chalicelib.adapters.migrate import migrate


def handle_migrate(event, context=None):
    return {"applied": migrate(bootstrap.database(), app_user=bootstrap.settings().app_database_user)}
