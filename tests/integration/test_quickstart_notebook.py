"""examples/quickstart.ipynb runs top to bottom on a real Jupyter kernel (nbclient + ipykernel).

The notebook's cell tagged ``parameters`` is replaced (as papermill would) by a smaller
experiment: 3 clients, 2 rounds, the logistic-regression model, a fixed noise multiplier with
the RDP accountant (no noise planning). Everything else runs as a reader would run it.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"

SMALL = """\
changes = {
    "name": "quickstart",
    "rounds": 2,
    "federation": {"num_clients": 3},
    "train": {"model": "logreg", "local_epochs": 1},
    "privacy": {"noise_multiplier": 1.0, "accountant": "rdp"},
}
run_folder = "nb-run"
"""

pytestmark = pytest.mark.usefixtures("no_leftover_processes")


def _text(cell: nbformat.NotebookNode) -> str:
    out = []
    for o in cell.get("outputs", []):
        if "text" in o:
            out.append(o["text"])
        for v in o.get("data", {}).values():
            if isinstance(v, str):
                out.append(v)
    return "\n".join(out)


def test_quickstart_notebook_runs_on_a_real_kernel(tmp_path: Path) -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, "the notebook needs exactly one cell tagged 'parameters'"
    params[0].source = SMALL
    NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    text = "\n".join(_text(c) for c in nb.cells if c.cell_type == "code")
    assert "Traceback" not in text
    assert "rounds=2" in text and "final_accuracy=" in text  # the RunResult
    assert "invalid configuration (2 problem(s))" in text  # replace() refused, listing both
    assert "verified" in text and "NOT verified" not in text
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])), (
        "the accuracy/epsilon plot was not drawn"
    )
    run = tmp_path / "nb-run"
    assert (run / "privacy_report.html").exists() and (run / "metrics.json").exists()
    assert "<iframe srcdoc=" in text  # the report, opened inline
