"""fedpriv ClientApp for `flwr run .` and `flower-supernode` (wiring only; see fedpriv.apps.client)."""

from fedpriv.apps import make_client_app

app = make_client_app()
