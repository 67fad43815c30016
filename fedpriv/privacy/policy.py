"""The device's own privacy policy: what the server sends is a request, never an order.

Whoever submits a run chooses its whole config, privacy section included. A device therefore
checks every train or evaluate request against a policy its owner set (deployment: the
``policy.json`` that ``fedpriv client start`` writes from its options; simulation: each virtual
client's own copy of the experiment, see :meth:`DevicePolicy.from_config`). A request may make
privacy stronger than the policy (more noise, a smaller budget, more clients per aggregate), never
weaker; a request outside the policy is refused the way a spent budget is refused: a signed,
recorded refusal with its reason, not a crash.

What the device then actually uses is :class:`EffectiveLimits`: the stricter of the policy and the
request for every bound.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedpriv.errors import ConfigError

if TYPE_CHECKING:
    from fedpriv.config import RunConfig

__all__ = ["DevicePolicy", "EffectiveLimits", "request_k_min"]

_MODES = ("off", "record", "client", "both", "distributed")
_SCHEMES = ("off", "bfv", "ckks")
_CUSTODY = ("shared", "threshold")
FORMAT = "fedpriv.device-policy/1"


def request_k_min(cfg: RunConfig) -> int:
    """The number of summed updates the run itself requires in an aggregate.

    Client-level DP sizes each client's noise share for ``k_min`` contributors; record-level
    runs need ``federation.min_train_clients`` (by default half of those sampled, as the server's
    strategy requires), and never fewer than 2 once more than one client is sampled, so an
    aggregate is never one client's update.
    """
    per_round = cfg.clients_per_round
    if cfg.distributed_dp:
        # Noise shares are sized for k_min contributors (by default every client).
        return max(1, cfg.federation.min_train_clients or cfg.federation.num_clients)
    if cfg.client_dp:
        return max(1, cfg.federation.min_train_clients or per_round)
    k = cfg.federation.min_train_clients or -(-per_round // 2)
    return max(min(2, per_round), k)


@dataclass(frozen=True)
class EffectiveLimits:
    """The bounds a device applies to one request: the stricter of its policy and the request."""

    max_epsilon: float
    """Record-level epsilon this run may reach."""
    max_lifetime_epsilon: float
    """Record-level epsilon all runs on this device's data together may reach."""
    client_max_epsilon: float
    k_min: int
    """An aggregate with fewer summands is refused (not decrypted into training)."""


@dataclass(frozen=True)
class DevicePolicy:
    """What a device's owner allows. Every field is a bound the server cannot loosen.

    Parameters
    ----------
    allowed_modes, allowed_schemes
        Privacy modes (``off``, ``record``, ``client``, ``both``) and encryption schemes
        (``off``, ``bfv``, ``ckks``) this device takes part in.
    max_epsilon
        Record-level epsilon one run may spend (a run asking for more is capped to this).
    max_lifetime_epsilon
        Record-level epsilon all runs on this data may spend together (``inf`` = no cap beyond
        each run's).
    min_noise_multiplier
        Smallest record-level DP-SGD noise multiplier accepted.
    max_delta
        Largest delta accepted (record- and client-level).
    min_clip_norm, max_clip_norm
        Bounds on the per-example clip norm (keep the quantized sum and the noise scale sane).
    client_max_epsilon
        Client-level epsilon one run may reach.
    min_clients_per_aggregate
        k_min: an aggregate summing fewer updates is never decrypted into training.
    min_sigma_effective
        Distributed DP: smallest effective noise multiplier of the summed noise (its shares
        sized for k_min clients, discretisation and rounding accounted for) accepted.
    allowed_custody
        Key custodies (``shared``, ``threshold``) this device takes part in: a device that
        requires threshold custody refuses a run whose key every client holds.
    require_rebuilt_aggregate
        Threshold custody: partially decrypt only an aggregate this device rebuilt from the
        round's signed updates (the request must carry them).
    """

    allowed_modes: tuple[str, ...] = ("record", "both", "client")
    allowed_schemes: tuple[str, ...] = ("bfv", "ckks")
    max_epsilon: float = 10.0
    max_lifetime_epsilon: float = 10.0
    min_noise_multiplier: float = 0.0
    max_delta: float = 1e-5
    min_clip_norm: float = 1e-6
    max_clip_norm: float = 1e6
    client_max_epsilon: float = 10.0
    min_clients_per_aggregate: int = 2
    min_sigma_effective: float = 0.0
    allowed_custody: tuple[str, ...] = _CUSTODY
    require_rebuilt_aggregate: bool = False

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ConfigError([f"device policy: {p}" for p in problems])

    def _problems(self) -> list[str]:
        out: list[str] = []
        for name, allowed in (
            ("allowed_modes", _MODES),
            ("allowed_schemes", _SCHEMES),
            ("allowed_custody", _CUSTODY),
        ):
            val = getattr(self, name)
            if not isinstance(val, tuple) or not val or any(v not in allowed for v in val):
                out.append(f"{name} must be a non-empty list of {', '.join(allowed)}; got {val!r}")
        for name in ("max_epsilon", "max_lifetime_epsilon", "client_max_epsilon"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or math.isnan(v) or v <= 0:
                out.append(f"{name} must be > 0 (inf allowed), got {v!r}")
        for name in ("min_noise_multiplier", "min_sigma_effective"):
            m = getattr(self, name)
            if not isinstance(m, (int, float)) or not math.isfinite(m) or m < 0:
                out.append(f"{name} must be finite and >= 0, got {m!r}")
        if not isinstance(self.max_delta, (int, float)) or not 0 < self.max_delta < 1:
            out.append(f"max_delta must be in (0, 1), got {self.max_delta!r}")
        lo, hi = self.min_clip_norm, self.max_clip_norm
        if not (isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and 0 < lo <= hi):
            out.append(f"need 0 < min_clip_norm <= max_clip_norm, got {lo!r}, {hi!r}")
        k = self.min_clients_per_aggregate
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            out.append(f"min_clients_per_aggregate must be an integer >= 1, got {k!r}")
        if not isinstance(self.require_rebuilt_aggregate, bool):
            out.append("require_rebuilt_aggregate must be true or false")
        return out

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_config(cls, cfg: RunConfig) -> DevicePolicy:
        """The policy of a simulated device that holds its own copy of the experiment.

        It accepts exactly the privacy this experiment asks for, or stronger: the mode and scheme
        it names, its budget, delta and noise, and the aggregate size it requires. The
        experiment's ``[device]`` section tightens any of these bounds further.
        """
        p, d = cfg.privacy, cfg.device
        modes = tuple(d.allowed_modes) or (p.mode,)
        schemes = tuple(d.allowed_schemes) or (cfg.encryption.scheme,)
        max_eps = d.max_epsilon or p.max_epsilon
        deltas = [p.delta] if cfg.record_level else []
        if cfg.client_dp:
            deltas.append(p.client_delta)
        return cls(
            allowed_modes=modes,
            allowed_schemes=schemes,
            max_epsilon=max_eps,
            max_lifetime_epsilon=d.max_lifetime_epsilon or math.inf,
            min_noise_multiplier=d.min_noise_multiplier,
            max_delta=d.max_delta or max(deltas or [p.delta]),
            client_max_epsilon=d.client_max_epsilon or p.client_max_epsilon,
            min_clients_per_aggregate=max(d.min_clients_per_aggregate, request_k_min(cfg)),
            min_sigma_effective=d.min_sigma_effective,
            allowed_custody=tuple(d.allowed_custody) or (cfg.encryption.key_custody,),
            require_rebuilt_aggregate=d.require_rebuilt_aggregate
            or (
                cfg.encryption.key_custody == "threshold"
                and cfg.encryption.decryption_check == "rebuild"
            ),
        )

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], *, source: str = "device policy") -> DevicePolicy:
        """Build from a JSON/TOML table; unknown keys and bad types are errors (all listed)."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: expected a table")
        names = {f.name for f in fields(cls)}
        errors = [f"{source}: unknown key {k!r}" for k in raw if k not in names | {"format"}]
        if "format" in raw and raw["format"] != FORMAT:
            errors.append(f"{source}: unsupported format {raw['format']!r} (expected {FORMAT})")
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                continue
            v = raw[f.name]
            if f.name == "require_rebuilt_aggregate":
                if not isinstance(v, bool):
                    errors.append(f"{source}: {f.name} must be true or false")
                    continue
            elif f.name in ("allowed_modes", "allowed_schemes", "allowed_custody"):
                if not isinstance(v, (list, tuple)):
                    errors.append(f"{source}: {f.name} must be a list")
                    continue
                v = tuple(v)
            elif f.name == "min_clients_per_aggregate":
                if not isinstance(v, int) or isinstance(v, bool):
                    errors.append(f"{source}: {f.name} must be an integer")
                    continue
            elif isinstance(v, str) and v.lower() in ("inf", "infinity"):
                v = math.inf
            elif not isinstance(v, (int, float)) or isinstance(v, bool):
                errors.append(f"{source}: {f.name} must be a number")
                continue
            else:
                v = float(v)
            kw[f.name] = v
        if errors:
            raise ConfigError(errors)
        try:
            return cls(**kw)
        except ConfigError as exc:
            raise ConfigError([f"{source}: {m}" for m in exc.errors]) from None

    @classmethod
    def load(cls, path: Path) -> DevicePolicy:
        try:
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{path}: device policy file not found") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: cannot read the device policy ({exc})") from None
        return cls.from_dict(raw, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"format": FORMAT, **asdict(self)}
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
            elif isinstance(v, float) and math.isinf(v):
                d[k] = "inf"
        return d

    def tighten(self, **bounds: Any) -> DevicePolicy:
        """A copy with the given bounds made stricter (never looser); None values are ignored."""
        cur = asdict(self)
        for k, v in bounds.items():
            if v is None:
                continue
            if k in ("max_epsilon", "max_lifetime_epsilon", "client_max_epsilon", "max_delta"):
                cur[k] = min(cur[k], float(v))
            elif k in (
                "min_noise_multiplier",
                "min_clip_norm",
                "min_clients_per_aggregate",
                "min_sigma_effective",
            ):
                cur[k] = max(cur[k], v)
            elif k == "max_clip_norm":
                cur[k] = min(cur[k], float(v))
            elif k in ("allowed_modes", "allowed_schemes", "allowed_custody"):
                cur[k] = tuple(x for x in cur[k] if x in tuple(v))
            elif k == "require_rebuilt_aggregate":
                cur[k] = cur[k] or bool(v)
            else:
                raise ConfigError(f"device policy: unknown bound {k!r}")
        return DevicePolicy(**cur)

    # ------------------------------------------------------------------ review
    def review(self, request: RunConfig, noise_multiplier: float | None = None) -> list[str]:
        """Every way ``request`` asks for weaker privacy than this policy allows (empty: none).

        ``noise_multiplier`` is the record-level sigma the request leads to (given, or planned
        from its target epsilon; mode ``distributed``: the effective sigma of the summed noise);
        the caller computes it once.
        """
        p = request.privacy
        out: list[str] = []
        if p.mode not in self.allowed_modes:
            out.append(
                f"privacy.mode={p.mode!r} is not allowed on this device "
                f"(allowed: {', '.join(self.allowed_modes)})"
            )
        if request.encryption.scheme not in self.allowed_schemes:
            out.append(
                f"encryption.scheme={request.encryption.scheme!r} is not allowed on this device "
                f"(allowed: {', '.join(self.allowed_schemes)})"
            )
        custody = request.encryption.key_custody
        if request.he_on and custody not in self.allowed_custody:
            out.append(
                f"encryption.key_custody={custody!r} is not allowed on this device "
                f"(allowed: {', '.join(self.allowed_custody)})"
            )
        if (
            request.he_on
            and custody == "threshold"
            and self.require_rebuilt_aggregate
            and request.encryption.decryption_check != "rebuild"
        ):
            out.append(
                "encryption.decryption_check='records': this device partially decrypts only "
                "aggregates it rebuilt from the round's signed updates ('rebuild')"
            )
        if request.record_dp:
            if p.delta > self.max_delta:
                out.append(f"privacy.delta={p.delta:g} is above this device's {self.max_delta:g}")
            if noise_multiplier is not None and noise_multiplier < self.min_noise_multiplier:
                out.append(
                    f"noise multiplier {noise_multiplier:.4g} is below this device's minimum "
                    f"{self.min_noise_multiplier:g}"
                )
            if not self.min_clip_norm <= p.max_grad_norm <= self.max_clip_norm:
                out.append(
                    f"privacy.max_grad_norm={p.max_grad_norm:g} is outside this device's "
                    f"[{self.min_clip_norm:g}, {self.max_clip_norm:g}]"
                )
        if request.distributed_dp:
            out += self._review_distributed(request, noise_multiplier)
        if request.client_dp:
            if p.client_delta > self.max_delta:
                out.append(
                    f"privacy.client_delta={p.client_delta:g} is above this device's "
                    f"{self.max_delta:g}"
                )
            if request_k_min(request) < self.min_clients_per_aggregate:
                out.append(
                    f"the run sizes client-level noise for {request_k_min(request)} clients, "
                    f"fewer than this device's {self.min_clients_per_aggregate}"
                )
        return out

    def _review_distributed(self, request: RunConfig, sigma_eff: float | None) -> list[str]:
        p, out = request.privacy, []
        if p.delta > self.max_delta:
            out.append(f"privacy.delta={p.delta:g} is above this device's {self.max_delta:g}")
        if sigma_eff is not None and sigma_eff < self.min_sigma_effective:
            out.append(
                f"the summed noise's effective noise multiplier {sigma_eff:.4g} is below this"
                f" device's minimum {self.min_sigma_effective:g}"
            )
        if not self.min_clip_norm <= p.max_grad_norm <= self.max_clip_norm:
            out.append(
                f"privacy.max_grad_norm={p.max_grad_norm:g} is outside this device's "
                f"[{self.min_clip_norm:g}, {self.max_clip_norm:g}]"
            )
        if request_k_min(request) < self.min_clients_per_aggregate:
            out.append(
                f"the run sizes its noise shares for {request_k_min(request)} clients, fewer"
                f" than this device's {self.min_clients_per_aggregate}"
            )
        return out

    def limits(self, request: RunConfig) -> EffectiveLimits:
        """The stricter of this policy and ``request`` for every bound."""
        p = request.privacy
        return EffectiveLimits(
            max_epsilon=min(self.max_epsilon, p.max_epsilon),
            max_lifetime_epsilon=self.max_lifetime_epsilon,
            client_max_epsilon=min(self.client_max_epsilon, p.client_max_epsilon),
            k_min=max(self.min_clients_per_aggregate, request_k_min(request)),
        )
