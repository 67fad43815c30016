"""fedpriv ClientApp for `flwr run .` and `flower-supernode` (wiring only; see fedpriv.apps.client)."""

import warnings

from fedpriv.apps import make_client_app

# Expected on every round and stated in the privacy report, so not worth a screenful per round
# in `flwr run . --stream`: Opacus' non-cryptographic RNG, and torch's note on Opacus' hooks.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")

app = make_client_app()
