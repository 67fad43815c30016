"""Record-level differential privacy: Opacus training, cumulative accounting, budget state."""

from fedpriv.privacy.accounting import (
    ACCOUNTANTS,
    DpEvent,
    compress_history,
    opacus_epsilon,
    plan_noise_multiplier,
    pld_epsilon,
)
from fedpriv.privacy.budget import BudgetDecision, check_budget, noise_multiplier_for
from fedpriv.privacy.ledger import GENESIS, HashChainWriter, read_chain, verify_chain
from fedpriv.privacy.state import ClientPrivacyState
from fedpriv.privacy.training import (
    LocalTrainResult,
    sample_rate,
    steps_per_round,
    train_local,
)

__all__ = [
    "ACCOUNTANTS",
    "GENESIS",
    "BudgetDecision",
    "ClientPrivacyState",
    "DpEvent",
    "HashChainWriter",
    "LocalTrainResult",
    "check_budget",
    "compress_history",
    "noise_multiplier_for",
    "opacus_epsilon",
    "plan_noise_multiplier",
    "pld_epsilon",
    "read_chain",
    "sample_rate",
    "steps_per_round",
    "train_local",
    "verify_chain",
]
