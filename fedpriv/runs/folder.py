"""The run folder and its layout.

::

    RUN_DIR/
      config.toml, config.json   resolved config (and its hash in metrics.json)
      metrics.json               per round: accuracy, loss, per-client epsilon, bytes up/down
      privacy_ledger.jsonl       one hash-chained line per client per round it was asked to train
      egress.jsonl               every message a client sent: kind, bytes, sha256, encrypted, DP
      globals/round_NNN.bin      the encrypted global model after each round (server-side view;
                                 threshold custody: the masked combined decryption clients finish)
      globals/round_NNN.aggregate.bin  threshold custody: the aggregate ciphertext T clients decrypted
      decryption.jsonl           threshold custody: every partial-decryption reply, signed
      model.safetensors          final global model as the clients decrypt it (no pickle)
      keys/                      simulation only: the key dealer's output (see fedpriv.keys)
      clients/<id>/              simulation only: each client's persistent privacy state
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.errors import ConfigError
from fedpriv.fileio import atomic_write_text, fedpriv_home

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = ["RunDir", "check_run_dir", "default_run_dir", "write_config"]


def default_run_dir(name: str = "run", *, run_id: int | None = None) -> Path:
    """The run folder when none is given.

    ``runs/<YYYYmmdd-HHMMSS>-<name>`` (relative to the working directory) for ``fedpriv
    simulate`` and ``fedpriv run``; ``$FEDPRIV_HOME/runs/flwr-<run_id>`` for a ``flwr run``
    without ``run-dir``, a path the ServerApp and every ClientApp of that run derive alike
    whatever their working directory.
    """
    if run_id is not None:
        return fedpriv_home() / "runs" / f"flwr-{run_id}"
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}"


def check_run_dir(out: Path, *, resume: bool = False) -> Path:
    """Check a run folder before anything is written to it; return it.

    A new run needs ``out`` absent or an empty folder; ``resume`` needs a run folder (its
    ``config.toml``).

    Raises
    ------
    ConfigError
        ``out`` is a file, a folder that is not empty (new run), or not a run (resume).
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder")
    if resume:
        if not (out / "config.toml").is_file():
            raise ConfigError(
                f"--out {out}: no run to resume here (no config.toml); give the folder of an "
                "interrupted run"
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"--out {out}: folder exists and is not empty; choose another --out, or add "
            "--resume to continue the run in it"
        )
    return out


def write_config(cfg: RunConfig, root: Path) -> Path:
    """Write the resolved config as ``config.toml`` and ``config.json``; return the TOML path."""
    import tomli_w

    from fedpriv.config import config_to_dict

    d = config_to_dict(cfg)
    atomic_write_text(root / "config.json", json.dumps(d, indent=2, sort_keys=True), mode=0o644)
    path = root / "config.toml"
    atomic_write_text(path, tomli_w.dumps(d), mode=0o644)
    return path


@dataclasses.dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def ledger(self) -> Path:
        return self.root / "privacy_ledger.jsonl"

    @property
    def egress(self) -> Path:
        return self.root / "egress.jsonl"

    @property
    def model(self) -> Path:
        return self.root / "model.safetensors"

    @property
    def config(self) -> Path:
        return self.root / "config.toml"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint.json"

    @property
    def keys(self) -> Path:
        return self.root / "keys"

    @property
    def server_params(self) -> Path:
        return self.root / "keys" / "server" / "params.json"

    @property
    def client_keys(self) -> Path:
        return self.root / "keys" / "client"

    def global_blob(self, server_round: int) -> Path:
        return self.root / "globals" / f"round_{server_round:03d}.bin"

    def aggregate_blob(self, server_round: int) -> Path:
        """Threshold custody: the round's aggregate ciphertext (``global_blob`` is its masked
        combined decryption)."""
        return self.root / "globals" / f"round_{server_round:03d}.aggregate.bin"

    @property
    def decryption_journal(self) -> Path:
        return self.root / "decryption.jsonl"

    def client_state(self, client_id: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in client_id)
        return self.root / "clients" / safe / "privacy_state.json"

    def read_metrics(self) -> dict[str, Any]:
        return dict(json.loads(self.metrics.read_text(encoding="utf-8")))
