"""Flower apps: the ServerApp and ClientApp factories that ``server/`` and ``clients/`` wrap."""

from fedpriv.apps.client import ClientSettings, make_client_app
from fedpriv.apps.server import ServerSettings, make_server_app

__all__ = ["ClientSettings", "ServerSettings", "make_client_app", "make_server_app"]
