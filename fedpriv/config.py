"""Run configuration: frozen dataclasses, TOML loading, ``--set`` overrides, whole-config validation.

A config is built in three steps, and every step collects *all* problems before raising one
:class:`~fedpriv.errors.ConfigError`:

1. parse TOML (file or string) into a dict and apply ``section.key=value`` overrides;
2. check every key exists and every value has the declared type;
3. check the values make sense together (ranges, cross-field rules).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from fedpriv.errors import ConfigError

__all__ = [
    "DataConfig",
    "DeviceConfig",
    "EncryptionConfig",
    "FederationConfig",
    "PrivacyConfig",
    "RunConfig",
    "SimulationConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_hash",
    "config_to_dict",
    "load_config",
    "threshold_for",
]

Partitioner = Literal["iid", "dirichlet", "pathological", "shard"]
PrivacyMode = Literal["off", "record", "client", "both", "distributed"]
LrSchedule = Literal["constant", "cosine"]
Scheme = Literal["off", "bfv", "ckks"]
KeyCustody = Literal["shared", "threshold"]
DecryptionCheck = Literal["records", "rebuild"]
Accountant = Literal["prv", "rdp"]


@dataclass(frozen=True)
class DataConfig:
    """Where data comes from and how it is split over clients."""

    dataset: str = "digits"
    """``digits`` (scikit-learn), ``mnist:PATH`` (IDX or CSV folder), ``csv:PATH``, ``hf:NAME``."""
    label_column: str = "label"
    holdout_fraction: float = 0.2
    """Share of the data kept aside as a global held-out test set (when the dataset has no test split)."""
    test_fraction: float = 0.2
    """Share of each client's partition used as its local test split."""
    partitioner: Partitioner = "dirichlet"
    alpha: float = 0.5
    classes_per_partition: int = 2
    max_samples: int = 0
    """Use at most this many training samples (0 = all)."""
    validation_fraction: float = 0.0
    """Hyperparameter tuning: hold out this share of the training data and evaluate on it
    instead of the test set (which is then never read). 0 = evaluate on the test set."""
    schema: str = ""
    """Data schema file (``fedpriv data schema infer``): every client checks its data against it
    before training and refuses on violation; its label set fixes the classes. '' = no check.
    Devices with their own data use their own schema (``fedpriv client start --schema``)."""


@dataclass(frozen=True)
class FederationConfig:
    num_clients: int = 10
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    """Share of all clients asked to evaluate the global model on their local test split."""
    min_train_clients: int = 0
    """Minimum replies for a round to count (0 = the number sampled)."""
    round_timeout_s: float = 600.0


@dataclass(frozen=True)
class TrainConfig:
    model: str = "cnn"
    local_epochs: int = 3
    batch_size: int = 32
    learning_rate: float = 0.5
    momentum: float = 0.0
    lr_schedule: LrSchedule = "constant"
    """``cosine``: the learning rate of round (step) t of T is ``lr * (1 + cos(pi (t-1) / T)) / 2``
    (privacy mode ``distributed``, where one round is one optimizer step)."""


@dataclass(frozen=True)
class PrivacyConfig:
    mode: PrivacyMode = "record"
    noise_multiplier: float = 0.0
    """Gaussian noise multiplier; 0 with ``target_epsilon`` > 0 plans it over the whole horizon."""
    target_epsilon: float = 8.0
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: Accountant = "prv"
    max_epsilon: float = 10.0
    """A client refuses a round that would take its cumulative epsilon past this."""
    grad_sample_mode: str = "auto"
    client_clip_norm: float = 1.0
    """Client-level DP: L2 bound on each client's whole model update (new - global)."""
    client_noise_multiplier: float = 0.0
    """Client-level noise std / clip norm for the *sum*; 0 = plan from client_target_epsilon."""
    client_target_epsilon: float = 8.0
    client_max_epsilon: float = 10.0
    """The run stops (and clients refuse) before a round that would pass this client-level epsilon."""
    client_delta: float = 1e-5
    total_records: int = 0
    """Mode ``distributed``: N, the number of training records over all clients, a public number
    fixed before training (q = train.batch_size / N; the noisy gradient sum is divided by the
    expected batch q*N). 0: the simulation runner fills it in from the partitions."""


@dataclass(frozen=True)
class EncryptionConfig:
    scheme: Scheme = "bfv"
    value_range: float = 4.0
    """Model weights are clipped to [-value_range, value_range] before encoding (clips are counted)."""
    max_examples_per_client: int = 0
    """Public bound on a client's aggregation weight (0 = derive from the data in simulation)."""
    poly_modulus_degree: int = 0
    """0 = choose automatically (BFV 2048 or 4096, whichever pads less; CKKS 8192)."""
    coeff_modulus_bits: tuple[int, ...] = ()
    """() = choose automatically from model size and number of clients."""
    ckks_scale_bits: int = 40
    key_custody: KeyCustody = "shared"
    """``shared``: every client holds the one BFV secret. ``threshold``: the secret is
    Shamir-shared, any ``threshold`` clients decrypt an aggregate together (docs/crypto.md)."""
    threshold: int = 0
    """T of the ``federation.num_clients`` share holders decrypt (0 = a majority,
    floor(n/2) + 1: any minority colluding with the server learns nothing, and up to
    ceil(n/2) - 1 holders may be offline)."""
    decryption_check: DecryptionCheck = "records"
    """Threshold custody: what a decrypting client checks before its partial decryption.
    ``records``: at least k_min valid signed update records of this round, as many as the
    aggregate claims. ``rebuild``: the request also carries the round's signed updates and the
    client rebuilds the aggregate from them (stops a server substituting one client's
    ciphertext; costs the download of every update)."""
    statistical_security: int = 40
    """Threshold custody: lambda, the statistical security of the flooding (bits)."""
    max_decryptions: int = 65536
    """Threshold custody: D, decryptions one dealt key serves before it must be re-dealt."""


def threshold_for(cfg: RunConfig) -> int:
    """T for a threshold-custody run: ``encryption.threshold``, else a majority of the clients."""
    return cfg.encryption.threshold or cfg.federation.num_clients // 2 + 1


@dataclass(frozen=True)
class DeviceConfig:
    """The data owners' own privacy policy, held by each (virtual) client, never by the server.

    In simulation every virtual client builds its policy from its own copy of the experiment
    (:meth:`fedpriv.privacy.policy.DevicePolicy.from_config`): it accepts the privacy the
    experiment asks for or stronger. These keys tighten that policy; 0 or an empty list keeps the
    experiment's own value. There is no seed here: DP randomness always comes from the device's
    OS CSPRNG.
    """

    allowed_modes: tuple[PrivacyMode, ...] = ()
    allowed_schemes: tuple[Scheme, ...] = ()
    max_epsilon: float = 0.0
    max_lifetime_epsilon: float = 0.0
    """Record-level epsilon over every run on this data (0 = no cap beyond each run's)."""
    min_noise_multiplier: float = 0.0
    max_delta: float = 0.0
    client_max_epsilon: float = 0.0
    min_clients_per_aggregate: int = 0
    """k_min: aggregates of fewer updates are refused (0 = what the run itself requires)."""
    min_sigma_effective: float = 0.0
    """Mode ``distributed``: smallest effective noise multiplier of the summed noise accepted."""
    allowed_custody: tuple[KeyCustody, ...] = ()
    """Key custodies this device takes part in (empty = the experiment's own)."""
    require_rebuilt_aggregate: bool = False
    """Threshold custody: partially decrypt only aggregates this device rebuilt from the
    round's signed updates (refuse ``decryption_check = "records"`` requests)."""


@dataclass(frozen=True)
class SimulationConfig:
    backend: str = "ray"
    num_cpus_per_client: int = 1
    ray_address: str = ""
    """Connect to an existing Ray cluster (e.g. ``auto``) instead of starting a local one."""
    eval_every: int = 1
    """The key holder evaluates the held-out set after every this many rounds (and the last)."""


@dataclass(frozen=True)
class RunConfig:
    """The whole experiment. Immutable; derive validated variants with :meth:`replace`."""

    name: str = "default"
    seed: int = 0
    rounds: int = 5
    data: DataConfig = field(default_factory=DataConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    encryption: EncryptionConfig = field(default_factory=EncryptionConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    simulation: SimulationConfig = field(default_factory=SimulationConfig)

    @property
    def dp_on(self) -> bool:
        """Any differential privacy (record-level, client-level or both)."""
        return self.privacy.mode != "off"

    @property
    def clients_per_round(self) -> int:
        return max(1, round(self.federation.fraction_train * self.federation.num_clients))

    @property
    def record_dp(self) -> bool:
        """Record-level DP-SGD (Opacus) on each client."""
        return self.privacy.mode in ("record", "both")

    @property
    def client_dp(self) -> bool:
        """Client-level distributed DP: clipped updates + integer noise shares before BFV."""
        return self.privacy.mode in ("client", "both")

    @property
    def distributed_dp(self) -> bool:
        """Distributed record-level DP: one central DP-SGD step per round, noise in the BFV sum."""
        return self.privacy.mode == "distributed"

    @property
    def record_level(self) -> bool:
        """The privacy unit is one record (local DP-SGD or distributed DP-SGD)."""
        return self.record_dp or self.distributed_dp

    @property
    def he_on(self) -> bool:
        return self.encryption.scheme != "off"

    def replace(self, **changes: Any) -> RunConfig:
        """A validated copy with ``changes``: top-level keys, whole sections as dicts (merged
        into the section), or dotted keys passed as a dict.

        ``cfg.replace(rounds=3, privacy={"target_epsilon": 3})`` and
        ``cfg.replace(**{"privacy.target_epsilon": 3})`` are the same change.

        Raises
        ------
        ConfigError
            Listing every invalid key and value (the copy is validated like a TOML file).
        """
        raw = config_to_dict(self)
        errors: list[str] = []
        for key, value in changes.items():
            *path, last = key.split(".")
            node = raw
            for part in path:
                nxt = node.get(part)
                if not isinstance(nxt, dict):
                    errors.append(f"{key}: {part} is not a section")
                    break
                node = nxt
            else:
                if dataclasses.is_dataclass(value) and not isinstance(value, type):
                    value = json.loads(json.dumps(dataclasses.asdict(value)))
                if isinstance(value, dict) and isinstance(node.get(last), dict):
                    node[last] = {**node[last], **value}
                else:
                    node[last] = list(value) if isinstance(value, tuple) else value
        if errors:
            raise ConfigError(errors)
        return config_from_dict(raw)


# --------------------------------------------------------------------------- parsing


def _type_ok(value: Any, tp: Any) -> tuple[bool, Any]:
    """Check (and lightly coerce) ``value`` against a field type. Returns (ok, value)."""
    origin = get_origin(tp)
    if origin is Literal:
        return (value in get_args(tp), value)
    if tp is bool:
        return (isinstance(value, bool), value)
    if tp is int:
        return (isinstance(value, int) and not isinstance(value, bool), value)
    if tp is float:
        # inf and nan are refused here: no setting means "unbounded" (they would pass range
        # checks like `> 0` and fail much later, inside Opacus or Ray)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return (math.isfinite(value), float(value))
        return (False, value)
    if tp is str:
        return (isinstance(value, str), value)
    if origin is tuple:
        (inner, _) = get_args(tp)
        if not isinstance(value, (list, tuple)):
            return (False, value)
        out = []
        for v in value:
            ok, cv = _type_ok(v, inner)
            if not ok:
                return (False, value)
            out.append(cv)
        return (True, tuple(out))
    if origin in (typing.Union, types.UnionType):
        for arg in get_args(tp):
            ok, cv = _type_ok(value, arg)
            if ok:
                return (True, cv)
        return (False, value)
    return (False, value)


def _type_name(tp: Any) -> str:
    if tp is float:
        return "a finite number"
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is tuple:
        return f"list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _build(cls: type, raw: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(raw, dict):
        errors.append(f"{path or 'config'}: expected a table, got {type(raw).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            where = f"{path}.{key}" if path else key
            errors.append(f"{where}: unknown key (allowed: {', '.join(sorted(names))})")
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        where = f"{path}.{f.name}" if path else f.name
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(typing.cast(type, tp), raw[f.name], where, errors)
            continue
        ok, value = _type_ok(raw[f.name], tp)
        if ok:
            kwargs[f.name] = value
        else:
            errors.append(f"{where}: expected {_type_name(tp)}, got {raw[f.name]!r}")
    return cls(**kwargs)


def _check(cfg: RunConfig) -> list[str]:
    """Cross-field and range rules. Returns every violation."""
    e: list[str] = []

    def need(cond: bool, msg: str) -> None:
        if not cond:
            e.append(msg)

    need(cfg.rounds >= 1, f"rounds: must be >= 1, got {cfg.rounds}")
    need(bool(cfg.name.strip()), "name: must not be empty")
    d = cfg.data
    kind = d.dataset.split(":", 1)[0]
    need(
        kind in {"digits", "mnist", "csv", "hf"},
        f"data.dataset: unknown dataset {d.dataset!r} (use digits, mnist:PATH, csv:PATH or hf:NAME)",
    )
    if kind in {"mnist", "csv", "hf"}:
        need(
            ":" in d.dataset and bool(d.dataset.split(":", 1)[1]),
            f"data.dataset: {kind} needs a path or name after ':'",
        )
    need(
        0.0 <= d.holdout_fraction < 1.0,
        f"data.holdout_fraction: must be in [0, 1), got {d.holdout_fraction}",
    )
    need(
        0.0 <= d.test_fraction < 1.0,
        f"data.test_fraction: must be in [0, 1), got {d.test_fraction}",
    )
    need(d.alpha > 0, f"data.alpha: must be > 0, got {d.alpha}")
    need(d.classes_per_partition >= 1, "data.classes_per_partition: must be >= 1")
    need(d.max_samples >= 0, "data.max_samples: must be >= 0")
    need(
        0.0 <= d.validation_fraction < 1.0,
        f"data.validation_fraction: must be in [0, 1), got {d.validation_fraction}",
    )
    if d.schema:
        need(
            d.schema == d.schema.strip() and d.schema.endswith(".json"),
            f"data.schema: expected the path of a .json schema file, got {d.schema!r}",
        )
    f = cfg.federation
    need(f.num_clients >= 1, f"federation.num_clients: must be >= 1, got {f.num_clients}")
    need(
        0.0 < f.fraction_train <= 1.0,
        f"federation.fraction_train: must be in (0, 1], got {f.fraction_train}",
    )
    need(
        0.0 <= f.fraction_evaluate <= 1.0,
        f"federation.fraction_evaluate: must be in [0, 1], got {f.fraction_evaluate}",
    )
    need(f.min_train_clients >= 0, "federation.min_train_clients: must be >= 0")
    need(
        f.min_train_clients <= f.num_clients,
        "federation.min_train_clients: cannot exceed num_clients",
    )
    need(f.round_timeout_s > 0, "federation.round_timeout_s: must be > 0")
    t = cfg.train
    need(t.local_epochs >= 1, f"train.local_epochs: must be >= 1, got {t.local_epochs}")
    need(t.batch_size >= 1, f"train.batch_size: must be >= 1, got {t.batch_size}")
    need(t.learning_rate > 0, f"train.learning_rate: must be > 0, got {t.learning_rate}")
    need(0.0 <= t.momentum < 1.0, f"train.momentum: must be in [0, 1), got {t.momentum}")
    from fedpriv.models import available_models

    need(
        t.model in available_models(),
        f"train.model: unknown model {t.model!r} (available: {', '.join(available_models())})",
    )
    p = cfg.privacy
    if p.mode in ("client", "both"):
        need(p.client_clip_norm > 0, "privacy.client_clip_norm: must be > 0")
        need(p.client_noise_multiplier >= 0, "privacy.client_noise_multiplier: must be >= 0")
        need(
            p.client_noise_multiplier > 0 or p.client_target_epsilon > 0,
            "privacy: client-level DP needs client_noise_multiplier > 0 or client_target_epsilon > 0",
        )
        need(
            0 < p.client_delta < 1, f"privacy.client_delta: must be in (0, 1), got {p.client_delta}"
        )
        need(p.client_max_epsilon > 0, "privacy.client_max_epsilon: must be > 0")
        need(
            cfg.encryption.scheme != "ckks",
            "privacy.mode: client-level DP adds integer noise in the quantized domain: use encryption.scheme = 'bfv' (or 'off')",
        )
    if p.mode == "distributed":
        need(
            cfg.encryption.scheme == "bfv",
            "privacy.mode: distributed DP adds integer noise shares that only an encrypted sum"
            " hides: use encryption.scheme = 'bfv'",
        )
        need(
            f.fraction_train == 1.0,
            "federation.fraction_train: distributed DP takes one step over the union of all"
            f" clients' data per round, so every client takes part (must be 1.0, got {f.fraction_train})",
        )
        need(
            cfg.encryption.key_custody == "shared",
            "privacy.mode: distributed DP runs with encryption.key_custody = 'shared' for now"
            " (clients catch up on past aggregates, which threshold custody does not yet"
            " decrypt for them)",
        )
        need(p.total_records >= 0, "privacy.total_records: must be >= 0")
        if p.total_records > 0:
            need(
                t.batch_size <= p.total_records,
                f"train.batch_size ({t.batch_size}) is the expected batch over all clients: it"
                f" cannot exceed privacy.total_records ({p.total_records})",
            )
    need(t.lr_schedule in ("constant", "cosine"), "train.lr_schedule: constant or cosine")
    if p.mode in ("record", "both", "distributed"):
        need(p.noise_multiplier >= 0, "privacy.noise_multiplier: must be >= 0")
        need(
            p.noise_multiplier > 0 or p.target_epsilon > 0,
            "privacy: set noise_multiplier > 0 or target_epsilon > 0 (DP without noise is no DP)",
        )
        need(p.max_grad_norm > 0, f"privacy.max_grad_norm: must be > 0, got {p.max_grad_norm}")
        need(0 < p.delta < 1, f"privacy.delta: must be in (0, 1), got {p.delta}")
        need(p.max_epsilon > 0, f"privacy.max_epsilon: must be > 0, got {p.max_epsilon}")
        if p.noise_multiplier == 0 and p.target_epsilon > 0:
            need(
                p.target_epsilon <= p.max_epsilon,
                f"privacy.target_epsilon ({p.target_epsilon}) exceeds privacy.max_epsilon ({p.max_epsilon}):"
                " clients would refuse the last rounds",
            )
        need(
            p.grad_sample_mode in {"auto", "fused", "hooks", "functorch", "ew", "ghost"},
            f"privacy.grad_sample_mode: unknown mode {p.grad_sample_mode!r}",
        )
    x = cfg.encryption
    if x.scheme != "off":
        need(x.value_range > 0, f"encryption.value_range: must be > 0, got {x.value_range}")
        need(x.max_examples_per_client >= 0, "encryption.max_examples_per_client: must be >= 0")
        need(
            x.poly_modulus_degree in {0, 2048, 4096, 8192, 16384, 32768},
            f"encryption.poly_modulus_degree: must be 0 (auto) or a power of two in 2048..32768, got {x.poly_modulus_degree}",
        )
        need(
            all(20 <= b <= 60 for b in x.coeff_modulus_bits),
            "encryption.coeff_modulus_bits: each prime must have 20..60 bits",
        )
        need(20 <= x.ckks_scale_bits <= 60, "encryption.ckks_scale_bits: must be in 20..60")
    e.extend(_custody_problems(cfg))
    dv = cfg.device
    for name in ("max_epsilon", "max_lifetime_epsilon", "client_max_epsilon"):
        v = getattr(dv, name)
        need(
            v >= 0 and v == v, f"device.{name}: must be >= 0 (0 = the experiment's value), got {v}"
        )
    need(
        dv.min_noise_multiplier >= 0 and math.isfinite(dv.min_noise_multiplier),
        "device.min_noise_multiplier: must be finite and >= 0",
    )
    need(0 <= dv.max_delta < 1, f"device.max_delta: must be in [0, 1), got {dv.max_delta}")
    need(dv.min_clients_per_aggregate >= 0, "device.min_clients_per_aggregate: must be >= 0")
    need(
        dv.min_sigma_effective >= 0 and math.isfinite(dv.min_sigma_effective),
        "device.min_sigma_effective: must be finite and >= 0",
    )
    if dv.allowed_modes:
        need(
            p.mode in dv.allowed_modes,
            f"device.allowed_modes {list(dv.allowed_modes)} excludes the experiment's privacy.mode"
            f" {p.mode!r}: every client would refuse",
        )
    if dv.allowed_custody:
        need(
            x.key_custody in dv.allowed_custody,
            f"device.allowed_custody {list(dv.allowed_custody)} excludes encryption.key_custody "
            f"{x.key_custody!r}: every client would refuse",
        )
    if dv.require_rebuilt_aggregate and x.key_custody == "threshold":
        need(
            x.decryption_check == "rebuild",
            "device.require_rebuilt_aggregate needs encryption.decryption_check = 'rebuild': "
            "every client would refuse the decryption requests",
        )
    if dv.allowed_schemes:
        need(
            cfg.encryption.scheme in dv.allowed_schemes,
            f"device.allowed_schemes {list(dv.allowed_schemes)} excludes encryption.scheme "
            f"{cfg.encryption.scheme!r}: every client would refuse",
        )
    s = cfg.simulation
    need(
        s.backend == "ray",
        f"simulation.backend: only 'ray' (Flower's simulation engine) is supported, got {s.backend!r}",
    )
    need(s.num_cpus_per_client >= 1, "simulation.num_cpus_per_client: must be an integer >= 1")
    need(s.eval_every >= 1, "simulation.eval_every: must be an integer >= 1")
    return e


def _custody_problems(cfg: RunConfig) -> list[str]:
    """Rules for ``encryption.key_custody`` and the threshold keys."""
    x, n = cfg.encryption, cfg.federation.num_clients
    out: list[str] = []
    if not 20 <= x.statistical_security <= 128:
        out.append(
            f"encryption.statistical_security: must be in 20..128, got {x.statistical_security}"
        )
    if not 1 <= x.max_decryptions <= 2**40:
        out.append(f"encryption.max_decryptions: must be in 1..2^40, got {x.max_decryptions}")
    if x.threshold < 0:
        out.append(f"encryption.threshold: must be >= 0 (0 = a majority), got {x.threshold}")
    if x.key_custody != "threshold":
        if x.threshold:
            out.append("encryption.threshold: only used with encryption.key_custody = 'threshold'")
        return out
    if x.scheme != "bfv":
        out.append(
            f"encryption.key_custody = 'threshold' needs encryption.scheme = 'bfv', got "
            f"{x.scheme!r}"
        )
    if x.coeff_modulus_bits:
        out.append(
            "encryption.coeff_modulus_bits: threshold custody derives its modulus from the "
            "flooding it must hold (docs/crypto.md); leave it empty"
        )
    if n < 2:
        out.append("encryption.key_custody = 'threshold' needs federation.num_clients >= 2")
    elif x.threshold and not 2 <= x.threshold <= n:
        out.append(
            f"encryption.threshold: must be in 2..{n} (the number of share holders, "
            f"federation.num_clients), got {x.threshold}"
        )
    elif threshold_for(cfg) > cfg.clients_per_round:
        # The server asks this round's contributors (and holders it met in earlier rounds): in
        # round 1 it knows only those it sampled.
        out.append(
            f"encryption.threshold: T = {threshold_for(cfg)} exceeds the {cfg.clients_per_round}"
            " clients sampled per round; raise federation.fraction_train or lower the threshold"
        )
    return out


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Build and validate a :class:`RunConfig`; raise one ConfigError listing every problem."""
    errors: list[str] = []
    cfg = _build(RunConfig, raw, "", errors)
    problems = _check(cfg)
    if errors:
        # Fields with a type error kept their defaults: report the range problems of the other
        # fields too, but not rules that involve a field already reported.
        bad = {e.split(":", 1)[0] for e in errors}
        errors += [p for p in problems if not any(b in p for b in bad)]
        raise ConfigError(errors)
    if problems:
        raise ConfigError(problems)
    return typing.cast(RunConfig, cfg)


def _parse_value(text: str) -> Any:
    """Parse an override value as a TOML literal; bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a raw config dict (returns a new dict)."""
    out = json.loads(json.dumps(raw))
    errors: list[str] = []
    for item in overrides:
        if "=" not in item:
            errors.append(f"--set {item!r}: expected KEY=VALUE, e.g. train.learning_rate=0.05")
            continue
        key, text = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            errors.append(f"--set {item!r}: empty key")
            continue
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                errors.append(f"--set {item!r}: {p} is not a table")
                break
        else:
            node[parts[-1]] = _parse_value(text.strip())
    if errors:
        raise ConfigError(errors)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Load a TOML experiment (or the built-in default when ``path`` is None) and apply overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"{p}: config file not found") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: not valid TOML ({exc})") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{p}: cannot read ({exc})") from None
        if "name" not in raw:
            raw["name"] = p.stem
    cfg = config_from_dict(apply_overrides(raw, overrides or []))
    if cfg.data.schema:
        # Checked here, where the config is written, not in config_from_dict: a device parses
        # the run's config too, and the schema path names a file on the operator's side.
        from fedpriv.data.schema import load_schema

        try:
            load_schema(cfg.data.schema)
        except ConfigError as exc:
            raise ConfigError([f"data.schema: {e}" for e in exc.errors]) from None
    return cfg


def config_to_dict(cfg: RunConfig) -> dict[str, Any]:
    """Plain-dict form (TOML/JSON friendly; tuples become lists)."""
    return typing.cast(dict[str, Any], json.loads(json.dumps(dataclasses.asdict(cfg))))


def config_hash(cfg: RunConfig) -> str:
    """SHA-256 over the canonical JSON of the resolved config."""
    blob = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
