"""The Flower app project that ``fedpriv run`` submits with ``flwr run``.

A minimal project (``pyproject.toml`` and two one-line modules that import the deployment apps
from the installed fedpriv package), written to a temporary folder, so the FAB the SuperLink
stores and ships is tiny, deterministic, and holds no code of its own. fedpriv must be
installed on the server host and on every device.
"""

from __future__ import annotations

from pathlib import Path

from fedpriv import __version__ as _fedpriv_version
from fedpriv.runs.flwr_config import FlowerRunConfig

__all__ = ["write_project"]

_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "fedpriv-deploy"
version = "{version}"
description = "fedpriv deployment app (imports the installed fedpriv package)"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "fedpriv"

[tool.flwr.app.components]
serverapp = "fedpriv_deploy_app.server_app:app"
clientapp = "fedpriv_deploy_app.client_app:app"

[tool.flwr.app.config]
{config}
"""

_SERVER = '''"""fedpriv deployment ServerApp (logic in fedpriv.deploy.apps)."""

from fedpriv.deploy.apps import make_deploy_server_app

app = make_deploy_server_app()
'''

_CLIENT = '''"""fedpriv deployment ClientApp (logic in fedpriv.deploy.apps)."""

from fedpriv.deploy.apps import make_deploy_client_app

app = make_deploy_client_app()
'''


def write_project(root: Path) -> Path:
    """Write the app project into ``root`` and return it."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = FlowerRunConfig().to_toml()  # every key, at its default
    (root / "pyproject.toml").write_text(
        _PYPROJECT.format(version=_fedpriv_version, config=cfg), encoding="utf-8"
    )
    pkg = root / "fedpriv_deploy_app"
    pkg.mkdir(exist_ok=True)
    (pkg / "__init__.py").write_text('"""fedpriv deployment app."""\n', encoding="utf-8")
    (pkg / "server_app.py").write_text(_SERVER, encoding="utf-8")
    (pkg / "client_app.py").write_text(_CLIENT, encoding="utf-8")
    return root
