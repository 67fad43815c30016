"""Nothing that crosses a network or comes from a user file is unpickled: scan our code."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p for d in ("fedpriv", "server", "clients", "benchmarks") for p in (ROOT / d).rglob("*.py")
]

FORBIDDEN = [
    (
        re.compile(
            r"^\s*(import pickle|from pickle import|import cPickle|import dill|import joblib)", re.M
        ),
        "pickle-family import",
    ),
    (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
    (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
    (re.compile(r"\bcloudpickle\b"), "cloudpickle"),
    (re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"), "yaml.load without SafeLoader"),
]
TORCH_LOAD = re.compile(r"\btorch\.load\(([^)]*)\)")


def test_scan_covers_the_code() -> None:
    assert len(SOURCES) > 30


def test_no_pickle_or_unsafe_loaders() -> None:
    problems = []
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        for pattern, what in FORBIDDEN:
            for m in pattern.finditer(text):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(f"{path.relative_to(ROOT)}:{line}: {what}")
        for m in TORCH_LOAD.finditer(text):
            if "weights_only=True" not in m.group(1):
                line = text.count("\n", 0, m.start()) + 1
                problems.append(
                    f"{path.relative_to(ROOT)}:{line}: torch.load without weights_only=True"
                )
    assert not problems, "\n".join(problems)


def test_scanner_catches_what_it_should(tmp_path: Path) -> None:
    bad = "import pickle\nx = pickle.loads(b)\nnp.load(f, allow_pickle=True)\ntorch.load(path)\n"
    hits = [what for pattern, what in FORBIDDEN if pattern.search(bad)]
    assert {"pickle-family import", "pickle.load", "numpy allow_pickle=True"} <= set(hits)
    assert any("weights_only=True" not in m.group(1) for m in TORCH_LOAD.finditer(bad))
