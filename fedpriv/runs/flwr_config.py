"""The Flower run-config keys fedpriv's apps read, typed, in one place.

``flwr run`` hands every ServerApp and ClientApp a flat ``run_config`` (the
``[tool.flwr.app.config]`` table of the project, overridden with ``--run-config``). fedpriv reads
and writes it only through :class:`FlowerRunConfig`:

==================  =================  =========================================================
key                 field              meaning
==================  =================  =========================================================
``fedpriv-config``  ``fedpriv_config`` absolute path of the experiment TOML ("" = the default)
``keys-dir``        ``keys_dir``       ``fedpriv keys`` output or a server bundle ("" = deal
                                       simulation keys into the run folder)
``run-dir``         ``run_dir``        where the server writes ("" = :func:`default_run_dir`)
``resume``          ``resume``         continue the run in ``run-dir`` from its checkpoint
``fedpriv-task``    ``task``           ``train`` or ``relay-keys`` (deployments)
``allowed-nodes``   ``allowed_nodes``  node ids the server may sample (deployments)
``node-map``        ``node_map``       ``client-id=node-id,...`` (deployments, key relay)
``node-wait-s``     ``node_wait_s``    seconds the server waits for every node
==================  =================  =========================================================
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.errors import ConfigError
from fedpriv.runs.folder import default_run_dir

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = ["TASKS", "FlowerRunConfig"]

TASKS = ("train", "relay-keys")

# field name -> Flower key
_KEYS = {
    "fedpriv_config": "fedpriv-config",
    "keys_dir": "keys-dir",
    "run_dir": "run-dir",
    "resume": "resume",
    "task": "fedpriv-task",
    "allowed_nodes": "allowed-nodes",
    "node_map": "node-map",
    "node_wait_s": "node-wait-s",
}


@dataclass(frozen=True)
class FlowerRunConfig:
    """fedpriv's keys of a Flower run config (see the module docstring)."""

    fedpriv_config: str = ""
    keys_dir: str = ""
    run_dir: str = ""
    resume: bool = False
    task: str = "train"
    allowed_nodes: str = ""
    node_map: str = ""
    node_wait_s: float = 600.0

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_mapping(cls, rc: Mapping[str, Any]) -> FlowerRunConfig:
        """Read (and type-check) fedpriv's keys; other keys are ignored.

        Raises
        ------
        ConfigError
            Listing every key with a value of the wrong type.
        """
        errors: list[str] = []
        kwargs: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = _KEYS[f.name]
            if key not in rc:
                continue
            value = rc[key]
            default = f.default
            if isinstance(default, bool):
                ok = isinstance(value, bool)
            elif isinstance(default, float):
                ok = isinstance(value, (int, float)) and not isinstance(value, bool)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, str)
            if ok:
                kwargs[f.name] = value
            else:
                errors.append(f"run config {key}: expected {type(default).__name__}, got {value!r}")
        if errors:
            raise ConfigError(errors)
        out = cls(**kwargs)
        problems = out._check()
        if problems:
            raise ConfigError(problems)
        return out

    @classmethod
    def from_context(cls, context: Any) -> FlowerRunConfig:
        """The keys of a Flower ``Context`` (ServerApp or ClientApp)."""
        return cls.from_mapping(context.run_config)

    def _check(self) -> list[str]:
        e = []
        if self.task not in TASKS:
            e.append(f"run config fedpriv-task={self.task!r}: use {' or '.join(TASKS)}")
        if not self.node_wait_s > 0:
            e.append(f"run config node-wait-s: must be > 0, got {self.node_wait_s}")
        if self.resume and not self.run_dir:
            e.append("run config resume=true needs run-dir (the run folder to continue)")
        for parse in (self.allowed_node_ids, self.node_ids):
            try:
                parse()
            except ConfigError as exc:
                e.extend(exc.errors)
        return e

    # ------------------------------------------------------------------ writing
    def to_mapping(self) -> dict[str, str | bool | float]:
        """``{flower key: value}`` for every key (the app's config table, or overrides)."""
        return {_KEYS[f.name]: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_toml(self) -> str:
        """The keys as a TOML document (``flwr run --run-config FILE``)."""
        lines = []
        for key, value in self.to_mapping().items():
            text = ("true" if value else "false") if isinstance(value, bool) else json.dumps(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """Write :meth:`to_toml` to ``path`` and return it."""
        path.write_text(self.to_toml(), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ derived values
    def config(self) -> RunConfig:
        """The experiment (``fedpriv-config``, or the built-in default)."""
        from fedpriv.config import load_config

        return load_config(self.fedpriv_config or None)

    def run_folder(self, run_id: int) -> Path:
        """``run-dir``, else the default folder of Flower run ``run_id`` (the same path for the
        ServerApp and every ClientApp of the run)."""
        return Path(self.run_dir) if self.run_dir else default_run_dir(run_id=run_id)

    def allowed_node_ids(self) -> set[int]:
        """``allowed-nodes`` as node ids (empty: every node)."""
        out: set[int] = set()
        for part in self.allowed_nodes.replace(" ", "").split(","):
            if not part:
                continue
            try:
                out.add(int(part))
            except ValueError:
                raise ConfigError(f"run config allowed-nodes: {part!r} is not a node id") from None
        return out

    def node_ids(self) -> dict[str, int]:
        """``node-map`` as ``{client id: node id}``."""
        out: dict[str, int] = {}
        for part in self.node_map.replace(" ", "").split(","):
            if not part:
                continue
            cid, sep, node = part.partition("=")
            try:
                if not sep or not cid:
                    raise ValueError
                out[cid] = int(node)
            except ValueError:
                raise ConfigError(
                    f"run config node-map: {part!r} is not client-id=node-id"
                ) from None
        return out
