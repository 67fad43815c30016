"""What a privacy report states, read from the run folder once.

:func:`load_facts` reads every record the report is built from (config, metrics, the hash-chained
privacy ledger and egress record, the public HE parameters, the identity registry, an audit
result, the digests of the pinned files), adds what only a person can say
(:class:`BuildOptions`) and what the building machine says about itself (:class:`Environment`),
and returns one frozen :class:`RunFacts`. The section builders in :mod:`fedpriv.report.sections`
read nothing else: no section touches the disk, the clock or the installed packages.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import platform
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedpriv.errors import StateError
from fedpriv.report.canonical import sha256_file
from fedpriv.report.records import TRACKED_FILES, ChainState, load_chain, read_json, run_id_for
from fedpriv.runs import RunDir

__all__ = [
    "SOFTWARE",
    "BaselineFacts",
    "BuildOptions",
    "ClientFacts",
    "Environment",
    "RunFacts",
    "TrackedFile",
    "client_sort_key",
    "final_accuracy",
    "load_facts",
    "utc_now",
]

# The packages whose versions the report records (identification.software).
SOFTWARE = (
    "fedpriv",
    "torch",
    "opacus",
    "flwr",
    "tenseal",
    "dp-accounting",
    "cryptography",
    "numpy",
    "matplotlib",
    "jsonschema",
)


@dataclass(frozen=True)
class BuildOptions:
    """What the run's records cannot say and a person must (all optional)."""

    signing_key: Path | None = None
    """PEM Ed25519 private key to sign with; default: the run's own key under $FEDPRIV_HOME."""
    baseline: Path | None = None
    """A non-private run folder to compare utility against."""
    controller: str = ""
    purpose: str = ""
    retention: str = ""


def utc_now() -> str:
    """The current time, UTC, to the second (ISO 8601 with ``Z``)."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _version(pkg: str) -> str:
    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


@dataclass(frozen=True)
class Environment:
    """What the report says about the machine and moment it is built, not about the run."""

    software: tuple[tuple[str, str], ...]
    """(package, version) for each of :data:`SOFTWARE`."""
    python: str
    platform: str
    clock: Callable[[], str] = utc_now
    """Timestamps of the report (creation and signature)."""

    @classmethod
    def probe(cls) -> Environment:
        """The installed versions, this Python and platform, and the real clock."""
        return cls(
            software=tuple((pkg, _version(pkg)) for pkg in SOFTWARE),
            python=platform.python_version(),
            platform=platform.platform(terse=True),
        )

    def version(self, pkg: str) -> str:
        return dict(self.software).get(pkg, "not installed")


@dataclass(frozen=True)
class TrackedFile:
    """A file the report pins by digest (one of :data:`~fedpriv.report.records.TRACKED_FILES`)."""

    path: str
    """Relative to the run folder, with forward slashes."""
    sha256: str
    bytes: int


def client_sort_key(cid: str) -> tuple[int, str]:
    """Natural order: client-2 before client-10."""
    return (len(cid), cid)


def final_accuracy(metrics: Mapping[str, Any]) -> float | None:
    """The held-out accuracy of the last round that has one."""
    for r in reversed(metrics.get("rounds", [])):
        if r.get("heldout_accuracy") is not None:
            return float(r["heldout_accuracy"])
    return None


@dataclass(frozen=True)
class ClientFacts:
    """One client as the ledger and the metrics show it."""

    client_id: str
    records: int | None
    """Training records n_k (from its metrics, else the run's partition sizes)."""
    ledger: tuple[Mapping[str, Any], ...]
    """Its ledger lines, by round and sequence number."""
    metrics: tuple[tuple[int, Mapping[str, Any]], ...]
    """(round, its entry in that round's metrics) for every round it was sampled in."""

    @property
    def final(self) -> Mapping[str, Any] | None:
        return self.ledger[-1] if self.ledger else None

    @property
    def rounds_sampled(self) -> list[int]:
        return [r for r, _ in self.metrics]

    @property
    def rounds_trained(self) -> list[int]:
        return [int(e["round"]) for e in self.ledger if e.get("trained")]

    @property
    def rounds_refused(self) -> list[int]:
        return [int(e["round"]) for e in self.ledger if e.get("status") == "refused"]


@dataclass(frozen=True)
class BaselineFacts:
    """The non-private run given with ``--baseline``, as its metrics show it."""

    run_folder: str
    run_name: str
    privacy_mode: str
    encryption: str
    config_hash: str
    metrics_sha256: str
    final_accuracy: float | None


@dataclass(frozen=True)
class RunFacts:
    """Everything a report is built from, read once (see :func:`load_facts`).

    The mappings are the run's JSON documents as written; treat them as read-only.
    """

    root: Path
    config: Mapping[str, Any]
    """The resolved configuration (``config.json``)."""
    metrics: Mapping[str, Any]
    """``metrics.json``: the run's header, per-round and per-client metrics."""
    ledger: ChainState
    egress: ChainState
    params: Mapping[str, Any] | None
    """The public HE parameters (``keys/server/params.json``), when present."""
    identities: Mapping[str, str] | None
    """The server's identity registry: client id -> OpenSSH public key, when present."""
    audit: Mapping[str, Any] | None
    """An empirical privacy audit (``audit.json``), when present."""
    files: tuple[TrackedFile, ...]
    clients: tuple[ClientFacts, ...]
    """Every client in the ledger or the metrics, in natural order."""
    baseline: BaselineFacts | None
    options: BuildOptions
    environment: Environment
    created: str
    """When these facts were read (the report's creation time)."""
    optional_folders: frozenset[str] = field(default_factory=frozenset)
    """Which of ``globals``, ``keys/client``, ``clients`` exist in the run folder."""

    @property
    def run_id(self) -> str:
        return run_id_for(self.metrics, self.ledger)

    @property
    def scheme(self) -> str:
        """``bfv``, ``ckks`` or ``off``."""
        return str(self.metrics.get("encryption", "off"))

    @property
    def he_on(self) -> bool:
        return self.scheme != "off"

    @property
    def record_dp(self) -> bool:
        """Record-level DP with per-client ledger histories: DP-SGD on each client (modes
        ``record``, ``both``) or one central DP-SGD step per round (``distributed``)."""
        return str(self.metrics.get("privacy_mode", "off")) in ("record", "both", "distributed")

    @property
    def distributed(self) -> Mapping[str, Any] | None:
        """The plan of privacy mode ``distributed`` (noise shares in the encrypted sum)."""
        if str(self.metrics.get("privacy_mode", "off")) != "distributed":
            return None
        plan = self.metrics.get("distributed")
        return plan if isinstance(plan, dict) else None

    @property
    def client_level(self) -> Mapping[str, Any] | None:
        """The run's client-level DP plan (modes ``client`` and ``both``), as the server logged it."""
        if str(self.metrics.get("privacy_mode", "off")) not in ("client", "both"):
            return None
        plan = self.metrics.get("client_level")
        return plan if isinstance(plan, dict) else None

    @property
    def simulation(self) -> bool:
        # Only the simulation runner deals keys into the run folder.
        return "keys/client" in self.optional_folders

    @property
    def rounds(self) -> list[Mapping[str, Any]]:
        """The metrics of every round that ran, in order."""
        return list(self.metrics.get("rounds", []))

    @property
    def final_accuracy(self) -> float | None:
        return final_accuracy(self.metrics)

    @property
    def privacy(self) -> Mapping[str, Any]:
        """The ``[privacy]`` table of the configuration."""
        return dict(self.config.get("privacy", {}))

    @property
    def train(self) -> Mapping[str, Any]:
        return dict(self.config.get("train", {}))

    @property
    def data(self) -> Mapping[str, Any]:
        return dict(self.config.get("data", {}))

    @property
    def client_records(self) -> list[dict[str, Any]]:
        """The clients' own signed records (parsed; signatures are checked by ``verify``)."""
        out = []
        for e in self.ledger.entries:
            text = e.get("client_record")
            if isinstance(text, str) and text:
                try:
                    rec = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
        return out

    @property
    def test_seeded(self) -> tuple[str, ...]:
        """Clients whose records say their DP randomness came from a test seed, not the CSPRNG."""
        from fedpriv.privacy.rng import RNG_OS

        seeded = {str(r.get("client_id")) for r in self.client_records if r.get("rng") != RNG_OS}
        # Runs from before per-device randomness named a seed in their config.
        if self.record_dp and int(self.privacy.get("noise_seed", -1)) >= 0:
            seeded |= {c.client_id for c in self.clients}
        return tuple(sorted(seeded))

    @property
    def fixed_noise_seed(self) -> bool:
        """Some device drew its DP randomness from a fixed seed (which voids the guarantee)."""
        return bool(self.test_seeded)

    def file_sha256(self, rel: str) -> str | None:
        return next((f.sha256 for f in self.files if f.path == rel), None)


def _clients(ledger: ChainState, metrics: Mapping[str, Any]) -> tuple[ClientFacts, ...]:
    by_ledger: dict[str, list[Mapping[str, Any]]] = {}
    for e in ledger.entries:
        by_ledger.setdefault(str(e.get("client_id")), []).append(e)
    by_metrics: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for r in metrics.get("rounds", []):
        for cid, c in (r.get("clients") or {}).items():
            by_metrics.setdefault(str(cid), []).append((int(r["round"]), c))
    sizes = metrics.get("partition_sizes") or []
    out = []
    for cid in sorted(set(by_ledger) | set(by_metrics), key=client_sort_key):
        n: int | None = None
        for _, c in by_metrics.get(cid, []):
            if c.get("num_examples") is not None:
                n = int(c["num_examples"])
        if n is None and cid.startswith("client-") and cid[7:].isdigit():
            i = int(cid[7:])
            n = int(sizes[i]) if i < len(sizes) else None
        lines = sorted(by_ledger.get(cid, []), key=lambda e: (int(e["round"]), int(e["seq"])))
        out.append(ClientFacts(cid, n, tuple(lines), tuple(by_metrics.get(cid, []))))
    return tuple(out)


def _baseline(folder: Path) -> BaselineFacts:
    path = folder / "metrics.json"
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: cannot read the baseline's metrics ({exc})") from None
    return BaselineFacts(
        run_folder=folder.resolve().name,
        run_name=str(metrics.get("name", "")),
        privacy_mode=str(metrics.get("privacy_mode", "")),
        encryption=str(metrics.get("encryption", "")),
        config_hash=str(metrics.get("config_hash", "")),
        metrics_sha256=sha256_file(path),
        final_accuracy=final_accuracy(metrics),
    )


def _identities(path: Path) -> dict[str, str] | None:
    if not path.exists():
        return None
    doc = read_json(path, "identity registry")
    if not all(isinstance(v, str) for v in doc.values()):
        raise StateError(f"{path}: the identity registry must map client ids to public keys")
    return {str(k): str(v) for k, v in doc.items()}


def load_facts(
    run_dir: Path, opts: BuildOptions | None = None, env: Environment | None = None
) -> RunFacts:
    """Read ``run_dir`` (and the baseline run, if any) into :class:`RunFacts`.

    Parameters
    ----------
    run_dir
        The run folder.
    opts
        What a person adds (controller, purpose, retention, baseline, signing key).
    env
        The building machine; default :meth:`Environment.probe`.

    Raises
    ------
    StateError
        A record the report needs is missing or unreadable.
    VerificationError
        The ledger or egress chain is broken: a report must not vouch for altered records.
    """
    opts = opts or BuildOptions()
    env = env or Environment.probe()
    rd = RunDir(Path(run_dir))
    root = rd.root
    metrics = read_json(rd.metrics, "metrics.json")
    config = read_json(root / "config.json", "config.json")
    params = (
        read_json(rd.server_params, "public HE parameters") if rd.server_params.exists() else None
    )
    audit_path = root / "audit.json"
    audit = read_json(audit_path, "audit result") if audit_path.exists() else None
    files = tuple(
        TrackedFile(rel, sha256_file(root / rel), (root / rel).stat().st_size)
        for rel in TRACKED_FILES
        if (root / rel).is_file()
    )
    ledger = load_chain(rd.ledger, root)
    egress = load_chain(rd.egress, root)
    return RunFacts(
        root=root,
        config=config,
        metrics=metrics,
        ledger=ledger,
        egress=egress,
        params=params,
        identities=_identities(rd.server_params.parent / "identities.json"),
        audit=audit,
        files=files,
        clients=_clients(ledger, metrics),
        baseline=_baseline(opts.baseline) if opts.baseline is not None else None,
        options=opts,
        environment=env,
        created=env.clock(),
        optional_folders=frozenset(
            d for d in ("globals", "keys/client", "clients") if (root / d).is_dir()
        ),
    )
