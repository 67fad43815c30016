"""``fedpriv client start --schema``: the device's own schema, validated and put in the node config."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from fedpriv.config import load_config
from fedpriv.data.schema import check_client_data, infer_schema
from fedpriv.errors import ConfigError


def test_prepare_client_writes_the_devices_schema(tmp_path: Path) -> None:
    from fedpriv.deploy.client import prepare_client
    from fedpriv.deploy.dealer import init_federation

    cfg = load_config(None, ["federation.num_clients=1", "train.model=logreg"])
    fed = init_federation(cfg, tmp_path / "fed", nodes=1, num_values=100, max_examples=400)
    bundle = fed.client_bundles["client-0"]
    csv = tmp_path / "mine.csv"
    csv.write_text("a,b,label\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(40)))
    schema = tmp_path / "schema.json"
    infer_schema(f"csv:{csv}").save(schema)
    prep = prepare_client(bundle, data=str(csv), state_dir=tmp_path / "s", schema=schema)
    nc = tomllib.loads(prep.node_config.read_text())
    assert nc["schema"] == str(schema.resolve())
    # the ClientApp's hook reads it from the node config, with the device's own data
    run_cfg = load_config(None)
    assert check_client_data(run_cfg, nc["data"], nc).ok
    csv.write_text(csv.read_text() + "3,4,cat\n")
    assert check_client_data(run_cfg, nc["data"], nc).failed_checks == ("label-set",)
    # an invalid schema stops `client start` instead of failing every round later
    (tmp_path / "bad.json").write_text(json.dumps({"format": "fedpriv-data-schema"}))
    with pytest.raises(ConfigError, match="data schema"):
        prepare_client(
            bundle, data=str(csv), state_dir=tmp_path / "s", schema=tmp_path / "bad.json"
        )
