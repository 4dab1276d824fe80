"""A key per client (chalicelib/domain/clients.py, scripts/clients.py): each
client's keys have their own rate bucket, a rotation adds a key while the old
one keeps working, a revocation stops a key at once, all from the one
definitions file. Runs the app in-process on a copy of that file."""
import json
import shutil

import pytest
from chalice.test import Client

from chalicelib import bootstrap, settings as settings_module
from chalicelib.domain.clients import LOCAL_KEY
from scripts import clients
from tests.conftest import session_settings


@pytest.fixture
def definitions(tmp_path, monkeypatch, clean_db):
    path = tmp_path / "usage_plans.json"
    shutil.copy(settings_module.PLANS_FILE, path)
    monkeypatch.setattr(settings_module, "PLANS_FILE", path)
    assert clients.main(["add", "tight-two", "--plan", "limited"], path=path) == 0
    # Chalice's test client puts the local stage's config in os.environ; the session's own values win.
    bootstrap.reset(**{**session_settings(clean_db), "APP_RATE_LIMIT": "true"})
    yield path
    bootstrap.reset()


@pytest.fixture
def client():
    from app import app

    with Client(app, stage_name="local") as test_client:
        yield test_client


def status(client, key):
    return client.http.get("/products/search?q=phone", headers={"x-api-key": key}).status_code


def key(name, generation=1):
    return LOCAL_KEY.format(client=name, generation=generation)


def test_clients_on_one_plan_have_buckets_of_their_own(definitions, client):
    burst = json.loads(definitions.read_text())["plans"]["limited"]["burst"]
    assert [status(client, key("limited")) for _ in range(burst)] == [200] * burst
    assert status(client, key("limited")) == 429
    assert status(client, key("tight-two")) == 200  # same plan, its own key, its own bucket


def test_rotation_keeps_the_old_key_until_it_is_revoked(definitions, client):
    assert clients.main(["rotate", "tight-two"], path=definitions) == 0
    assert status(client, key("tight-two", 1)) == 200
    assert status(client, key("tight-two", 2)) == 200
    assert clients.main(["revoke", "tight-two", "--key", "1"], path=definitions) == 0
    assert status(client, key("tight-two", 1)) == 403  # at once: the app rereads the file
    assert status(client, key("tight-two", 2)) == 200


def test_revoking_a_client_cuts_off_only_that_client(definitions, client):
    assert clients.main(["revoke", "tight-two"], path=definitions) == 0
    assert status(client, key("tight-two")) == 403
    assert status(client, key("dev")) == 200
    saved = json.loads(definitions.read_text())["clients"]["tight-two"]
    assert saved["keys"] == [] and saved["revoked"] == [1]


def test_bad_commands_change_nothing(definitions):
    before = definitions.read_text()
    assert clients.main(["add", "Bad Name", "--plan", "standard"], path=definitions) == 2
    assert clients.main(["add", "new", "--plan", "no-such-plan"], path=definitions) == 2
    assert clients.main(["add", "dev", "--plan", "standard"], path=definitions) == 2
    assert clients.main(["revoke", "dev", "--key", "7"], path=definitions) == 2
    assert clients.main(["rotate", "nobody"], path=definitions) == 2
    assert definitions.read_text() == before


def test_the_list_shows_each_plans_limits_per_key_and_per_person(definitions, capsys):
    assert clients.main(["list"], path=definitions) == 0
    shown = capsys.readouterr().out
    assert "plan public    2000/s burst 4000 per key, 5/s burst 20 per person" in shown
    assert "plan standard  100/s burst 200 per key\n" in shown
