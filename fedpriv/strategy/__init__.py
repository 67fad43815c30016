"""Server-side aggregation: the Flower strategy that sums encrypted updates without a key."""

from fedpriv.strategy.core import ClientRoundRecord, EncryptedFedAvg, RoundRecord

__all__ = ["ClientRoundRecord", "EncryptedFedAvg", "RoundRecord"]
