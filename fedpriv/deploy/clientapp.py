"""A ``flwr-clientapp`` that runs the ClientApp installed on the device, never the run's FAB code.

Flower ships each run's app (the FAB) from whoever submits the run to every SuperNode, which then
imports and executes it: the run submitter runs code on the devices, next to the HE secret.
Flower can check FAB signatures (``flower-supernode --trusted-entities``), but only for apps
published through the Flower platform; a self-hosted SuperLink never marks a FAB verified.

``fedpriv client start`` therefore puts this program first on the SuperNode's ``PATH`` under
the name ``flwr-clientapp``. It is Flower's own ``flwr-clientapp`` (same arguments, same
Runtime API protocol), except that it does not unpack the FAB and always executes
:func:`fedpriv.deploy.apps.make_deploy_client_app` from the installed fedpriv package. The
server can only send messages, which the ClientApp validates.

Run as ``python -m fedpriv.deploy.clientapp`` with ``flwr-clientapp``'s arguments; the
``flwr-clientapp`` shim that starts it (or hands the task to the warm server) is written by
:func:`fedpriv.deploy.warm.install_shim`. Imports go one way: ``warm`` uses this module.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

__all__ = ["main", "patch_flower"]

log = logging.getLogger("fedpriv.deploy.clientapp")


def patch_flower() -> None:
    """Swap FAB installation and app loading in Flower's clientapp runner for fedpriv's app."""
    import flwr.supernode.runtime.run_clientapp as rc

    from fedpriv.deploy.apps import make_deploy_client_app

    missing = [n for n in ("install_from_fab", "get_load_client_app_fn") if not hasattr(rc, n)]
    if missing:  # pragma: no cover - only on a Flower version this was not written for
        raise RuntimeError(
            f"flwr {getattr(rc, '__name__', '')} lacks {missing}; this fedpriv release supports "
            "flwr 1.42 (pip install flwr==1.42.0)"
        )

    def _no_install(*_args: Any, **_kwargs: Any) -> None:
        return None

    def _loader(**_kwargs: Any) -> Callable[..., Any]:
        def load(fab_id: str, fab_version: str, fab_hash: str) -> Any:
            log.info(
                "run app %s %s (FAB %s...): executing the installed fedpriv ClientApp",
                fab_id,
                fab_version,
                fab_hash[:12],
            )
            return make_deploy_client_app()

        return load

    rc.install_from_fab = _no_install  # type: ignore[assignment]
    rc.get_load_client_app_fn = _loader  # type: ignore[assignment]


def main() -> None:
    """Entry point (``flwr-clientapp`` replacement)."""
    patch_flower()
    from flwr.supernode.cli.flwr_clientapp import flwr_clientapp

    flwr_clientapp()


if __name__ == "__main__":
    main()
