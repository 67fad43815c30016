"""One error hierarchy for fedpriv.

Every error carries an ``exit_code`` that the CLI returns, so scripts can tell a bad
config from a spent budget from a tampered message without parsing text.

=========  ==========================  =============================================
exit code  class                       meaning
=========  ==========================  =============================================
0          (none)                      success
1          FedprivError                unexpected failure inside fedpriv
2          ConfigError                 a config file or --set value is invalid
3          DataError                   a dataset or data file cannot be read/used,
                                       or does not match its data schema
4          CryptoError                 key material missing, wrong or tampered
5          WireError                   a message failed validation (size, params...)
6          BudgetExhaustedError        a privacy budget would be exceeded
7          StateError                  persistent client/server state is corrupt
8          RunFailedError              the federated run did not complete
9          VerificationError           a report or ledger failed verification
130        RunInterrupted              stopped by Ctrl-C/SIGTERM; the run folder resumes
=========  ==========================  =============================================
"""

from __future__ import annotations

__all__ = [
    "BudgetExhaustedError",
    "ConfigError",
    "CryptoError",
    "DataCheckError",
    "DataError",
    "FedprivError",
    "RunFailedError",
    "RunInterrupted",
    "StateError",
    "VerificationError",
    "WireError",
]


class FedprivError(Exception):
    """Base class of every error fedpriv raises on purpose."""

    exit_code: int = 1


class ConfigError(FedprivError):
    """A configuration is invalid. ``errors`` lists every problem found, not just the first."""

    exit_code = 2

    def __init__(self, errors: list[str] | str) -> None:
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        super().__init__(f"invalid configuration ({len(self.errors)} problem(s)):\n{lines}")


class DataError(FedprivError):
    """A dataset or data file cannot be loaded or does not fit the task."""

    exit_code = 3


class DataCheckError(DataError):
    """Data does not match its data schema; ``failed_checks`` names every violated check."""

    def __init__(self, message: str, failed_checks: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.failed_checks = tuple(failed_checks)


class CryptoError(FedprivError):
    """Key material is missing, mismatched, or failed an integrity check."""

    exit_code = 4


class WireError(FedprivError):
    """Bytes received from another party failed validation before being used."""

    exit_code = 5


class BudgetExhaustedError(FedprivError):
    """Training would take a client past its privacy budget."""

    exit_code = 6


class StateError(FedprivError):
    """Persistent state (accountant history, keys, checkpoints) is unreadable or corrupt."""

    exit_code = 7


class RunFailedError(FedprivError):
    """A federated run did not complete successfully."""

    exit_code = 8


class VerificationError(FedprivError):
    """A report, ledger or signature failed verification."""

    exit_code = 9


class RunInterrupted(FedprivError):
    """A run was stopped by Ctrl-C or SIGTERM; its run folder resumes (``resume=True``)."""

    exit_code = 130

    def __init__(self, message: str, run_dir: object = None) -> None:
        super().__init__(message)
        self.run_dir = run_dir
