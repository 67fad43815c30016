"""Data schemas the data owner controls: inference, checks, and the device-side hook.

``fedpriv data schema infer SPEC --out schema.json`` writes a :class:`DataSchema` from trusted
reference data; ``fedpriv data check SPEC --schema schema.json`` and every device before it
trains (:func:`check_client_data`) check data against it. numpy and the standard library only
(plus ``jsonschema`` to validate a schema file on load); no pandas.
"""

from fedpriv.data.schema.check import CHECK_NAMES, CheckReport, Violation, check_data, check_parts
from fedpriv.data.schema.device import (
    DataCheckResult,
    check_client_data,
    check_local_data,
    client_label_set,
    client_schema,
)
from fedpriv.data.schema.infer import infer_schema, sorted_labels
from fedpriv.data.schema.model import (
    SCHEMA_FORMAT,
    SCHEMA_VERSION,
    DataSchema,
    FeatureRule,
    ImageRule,
    LabelRule,
    load_schema,
    schema_from_dict,
    schema_to_dict,
)

__all__ = [
    "CHECK_NAMES",
    "SCHEMA_FORMAT",
    "SCHEMA_VERSION",
    "CheckReport",
    "DataCheckResult",
    "DataSchema",
    "FeatureRule",
    "ImageRule",
    "LabelRule",
    "Violation",
    "check_client_data",
    "check_data",
    "check_local_data",
    "check_parts",
    "client_label_set",
    "client_schema",
    "infer_schema",
    "load_schema",
    "schema_from_dict",
    "schema_to_dict",
    "sorted_labels",
]
