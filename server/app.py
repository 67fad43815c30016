"""fedpriv ServerApp for `flwr run .` (wiring only; the logic lives in fedpriv.apps.server)."""

from fedpriv.apps import make_server_app

app = make_server_app()
