"""The device-side hook: check local data against the data owner's schema before training.

Only :class:`DataCheckResult` leaves this module: pass/fail and the names of the failed checks.
The detailed report (rows, values, ranges) is logged on the device and never returned, so a
refusal tells the server *which rule* broke, never anything about the data.

Where the schema comes from
---------------------------
* the device's own node config ``schema`` (``fedpriv client start --schema PATH``) always wins;
* otherwise the run's ``data.schema`` (simulation, or a device training on a partition of the
  run's dataset). A device that trains on its own data (node config ``data``) ignores the run's
  path: it names a file on the server's side, and a device does not open paths a server picks.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedpriv.data.schema.check import check_data
from fedpriv.data.schema.model import DataSchema, load_schema

__all__ = [
    "DataCheckResult",
    "check_client_data",
    "check_local_data",
    "client_label_set",
    "client_schema",
]

log = logging.getLogger("fedpriv.data.check")


@dataclass(frozen=True)
class DataCheckResult:
    """What may leave the device: whether the data passed, and which checks failed."""

    ok: bool
    failed_checks: tuple[str, ...] = ()

    @property
    def reason(self) -> str:
        """The refusal text: ``data check failed: <check names>`` (empty when ok)."""
        return "" if self.ok else "data check failed: " + ", ".join(self.failed_checks)


PASSED = DataCheckResult(True)


def _normalize(spec: str) -> str:
    kind, sep, arg = spec.partition(":")
    if sep and kind in ("csv", "mnist") and arg:
        return f"{kind}:{Path(arg).expanduser().resolve()}"
    return spec


def _stamp(spec: str) -> tuple[Any, ...]:
    """Changes when the files behind ``spec`` change (part of the cache key)."""
    kind, _, arg = spec.partition(":")
    if kind not in ("csv", "mnist") or not arg:
        return ()
    p = Path(arg)
    try:
        files = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
        return tuple((q.name, q.stat().st_mtime_ns, q.stat().st_size) for q in files)
    except OSError:
        return ("missing",)


@functools.lru_cache(maxsize=8)
def _schema_at(path: str, _stamp: tuple[Any, ...]) -> DataSchema:
    return load_schema(path)


def _load(schema: DataSchema | str | Path) -> DataSchema:
    if isinstance(schema, DataSchema):
        return schema
    p = Path(schema).expanduser().resolve()
    try:
        st = p.stat()
        stamp: tuple[Any, ...] = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = ()
    return _schema_at(str(p), stamp)


@functools.lru_cache(maxsize=8)
def _checked(spec: str, _stamp: tuple[Any, ...], schema: DataSchema) -> DataCheckResult:
    report = check_data(spec, schema)
    if report.ok:
        return PASSED
    log.warning("local data does not match its schema (stays on this device):\n%s", report.format())
    return DataCheckResult(False, report.failed_checks)


def check_local_data(data: str, schema: DataSchema | str | Path) -> DataCheckResult:
    """Check a dataset spec (``csv:PATH``, ``mnist:PATH``, ``digits``, ``hf:NAME``) on this device.

    The result is cached per process until the files (or the schema) change, so calling this
    before every round costs one read of the data.

    Raises
    ------
    ConfigError
        The schema file is missing or invalid (the device's configuration is wrong: that is
        the operator's error, not the data's).
    """
    spec = _normalize(str(data))
    return _checked(spec, _stamp(spec), _load(schema))


def client_schema(cfg: Any, own_data: str | None, node_config: Mapping[str, Any]) -> str:
    """The schema path that applies to this client ('' when none; see the module docstring)."""
    own = str(node_config.get("schema", "") or "")
    if own:
        return own
    if own_data:
        return ""
    return str(getattr(cfg.data, "schema", "") or "")


def check_client_data(
    cfg: Any, own_data: str | None, node_config: Mapping[str, Any]
) -> DataCheckResult:
    """The ClientApp's hook: check the data this client is about to train on.

    Parameters
    ----------
    cfg : RunConfig
        The run's config (its ``data.dataset`` and ``data.schema``).
    own_data : str or None
        The device's own dataset spec (``ClientSettings.data``), if it has one.
    node_config : mapping
        The node config (``schema`` = the device's own schema file).
    """
    path = client_schema(cfg, own_data, node_config)
    if not path:
        return PASSED
    return check_local_data(own_data or cfg.data.dataset, path)


def client_label_set(
    cfg: Any, own_data: str | None, node_config: Mapping[str, Any]
) -> tuple[str, ...] | None:
    """The label set (class order) the client's loader must use, or None without a schema."""
    path = client_schema(cfg, own_data, node_config)
    return _load(path).label.values if path else None
