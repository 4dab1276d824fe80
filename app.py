"""Lambda entry points. Each area's routes live in a Blueprint under
chalicelib/routes; handlers only parse, call the core, and map results."""
from chalice import Chalice

from chalicelib.routes import catalog, orders
from chalicelib.routes import search

app = Chalice(app_name="shop")
app.register_blueprint(search.routes)
app.register_blueprint(catalog.routes)
app.register_blueprint(orders.routes)
