import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_fedpriv_home(tmp_path_factory: pytest.TempPathFactory):
    """Run signing keys and other per-user state go to a temporary FEDPRIV_HOME, not ~/.fedpriv."""
    old = os.environ.get("FEDPRIV_HOME")
    os.environ["FEDPRIV_HOME"] = str(tmp_path_factory.mktemp("fedpriv-home"))
    yield
    if old is None:
        os.environ.pop("FEDPRIV_HOME", None)
    else:
        os.environ["FEDPRIV_HOME"] = old
