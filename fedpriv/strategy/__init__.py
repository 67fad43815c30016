"""Server-side aggregation: the encrypted FedAvg strategy, message codecs, plaintext fallback."""

from fedpriv.strategy.codec import (
    ClientCodec,
    EncodedUpdate,
    PublicParams,
    load_params_file,
    open_aggregator,
    params_from_dict,
)
from fedpriv.strategy.core import ClientRoundRecord, EncryptedFedAvg, RoundRecord
from fedpriv.strategy.plain import PlainAggregator, PlainCodec, PlainParams

__all__ = [
    "ClientCodec",
    "ClientRoundRecord",
    "EncodedUpdate",
    "EncryptedFedAvg",
    "PlainAggregator",
    "PlainCodec",
    "PlainParams",
    "PublicParams",
    "RoundRecord",
    "load_params_file",
    "open_aggregator",
    "params_from_dict",
]
