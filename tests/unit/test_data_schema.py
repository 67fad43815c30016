"""Data schemas: inference, every check on clean and broken data, the schema file, the hook."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from fedpriv.data import load_dataset, write_idx
from fedpriv.data.schema import (
    DataSchema,
    check_client_data,
    check_data,
    check_local_data,
    client_label_set,
    infer_schema,
    load_schema,
    schema_from_dict,
    schema_to_dict,
)
from fedpriv.errors import ConfigError, DataCheckError, DataError

HEADER = ["age", "height_cm", "weight_kg", "label"]


def _rows(n: int = 120, seed: int = 0) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    return [
        [int(rng.integers(20, 80)), round(160 + 8 * c + rng.normal(0, 4), 1), 70.0 + c, int(c)]
        for c in y
    ]


def _csv(path: Path, rows: list[list[object]], header: list[str] | None = None) -> str:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header or HEADER)
        w.writerows(rows)
    return f"csv:{path}"


@pytest.fixture
def tab(tmp_path: Path) -> tuple[Path, DataSchema]:
    spec = _csv(tmp_path / "clean.csv", _rows())
    return tmp_path, infer_schema(spec)


def _names(spec: str, schema: DataSchema) -> tuple[str, ...]:
    return check_data(spec, schema).failed_checks


# ----------------------------------------------------------------------------- inference


def test_inferred_tabular_schema(tab: tuple[Path, DataSchema]) -> None:
    _, s = tab
    assert s.kind == "tabular" and s.label.values == ("0", "1", "2")
    f = {x.name: x for x in s.features}
    assert set(f) == {"age", "height_cm", "weight_kg"}
    assert f["age"].type == "integer" and f["height_cm"].type == "float"
    assert f["age"].min >= 0 and f["age"].min <= 20 and f["age"].max >= 79
    assert f["height_cm"].typical is not None
    assert all(x.max_missing_fraction == 0 for x in s.features)
    assert schema_from_dict(schema_to_dict(s)) == s


def test_inferred_image_schemas(tmp_path: Path) -> None:
    d = infer_schema("digits")
    assert d.kind == "image" and d.image is not None
    assert d.image.shape == (1, 8, 8) and (d.image.pixel_min, d.image.pixel_max) == (0, 16)
    assert d.label.values == tuple(str(i) for i in range(10))
    folder = tmp_path / "mnist"
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte", rng.integers(0, 256, (30, 28, 28), np.uint8))
    write_idx(folder / "train-labels-idx1-ubyte", (np.arange(30) % 10).astype(np.uint8))
    m = infer_schema(f"mnist:{folder}")
    assert m.image is not None and m.image.shape == (1, 28, 28)
    assert (m.image.pixel_min, m.image.pixel_max, m.image.integer_pixels) == (0, 255, True)
    assert check_data(f"mnist:{folder}", m).ok


def test_inference_refuses_broken_reference_data(tmp_path: Path) -> None:
    rows = _rows()
    rows[5][3] = "cat"
    with pytest.raises(DataError, match=r"mix numbers and words.*'cat'"):
        infer_schema(_csv(tmp_path / "typo.csv", rows))
    s = infer_schema(_csv(tmp_path / "typo2.csv", rows), labels=["0", "1", "2", "cat"])
    assert s.label.values[-1] == "cat"  # declared: a real class
    rows = _rows()
    rows[3][1] = "n/a?"
    with pytest.raises(DataError, match=r"height_cm.*not finite numbers"):
        infer_schema(_csv(tmp_path / "bad.csv", rows))
    with pytest.raises(DataError, match=r"no label column 'y'"):
        infer_schema(_csv(tmp_path / "clean.csv", _rows()), label_column="y")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty"):
        infer_schema(f"csv:{tmp_path / 'empty.csv'}")


# ----------------------------------------------------------------------------- checks


def test_clean_data_passes(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rep = check_data(f"csv:{tmp / 'clean.csv'}", s)
    assert rep.ok and rep.rows == 120 and rep.failed_checks == ()
    rep.raise_if_failed()


def test_label_typo(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows = _rows()
    rows[16][3] = "cat"
    rep = check_data(_csv(tmp / "typo.csv", rows), s)
    assert rep.failed_checks == ("label-set",)
    (v,) = rep.violations
    assert v.column == "label" and v.rows == (17,) and v.lines == (18,) and "'cat'" in v.message


def test_out_of_range_and_other_units(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows = _rows()
    rows[40][0] = 250
    metres = [[a, round(h / 100, 3), w, c] for a, h, w, c in rows]  # type: ignore[operator]
    rep = check_data(_csv(tmp / "units.csv", metres), s)
    assert rep.failed_checks == ("range:age", "range:height_cm", "scale:height_cm")
    age = rep.violations[0]
    assert age.rows == (41,) and age.count == 1 and "250" in age.message
    assert rep.violations[1].count == 120


def test_a_shrunk_unit_inside_the_range_is_caught_by_the_scale_check(tmp_path: Path) -> None:
    rows = [[v + 0.5, v % 2] for v in range(0, 200)]
    s = infer_schema(_csv(tmp_path / "ref.csv", rows, ["grams", "label"]))
    kg = [[v / 1000, c] for v, c in rows]  # kilograms: every value still within [0, max]
    assert _names(_csv(tmp_path / "kg.csv", kg, ["grams", "label"]), s) == ("scale:grams",)


def test_missing_and_extra_columns(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows = [[a, h, c, 1] for a, h, _w, c in _rows()]
    names = _names(_csv(tmp / "cols.csv", rows, ["age", "height_cm", "label", "notes"]), s)
    assert names == ("column-missing:weight_kg", "extra-columns")
    no_label = [[a, h, w] for a, h, w, _ in _rows()]
    names = _names(_csv(tmp / "nolabel.csv", no_label, ["age", "height_cm", "weight_kg"]), s)
    assert names == ("column-missing:label",)
    relaxed = DataSchema(s.kind, s.label, s.features, allow_extra_columns=True)
    assert (
        _names(_csv(tmp / "cols2.csv", [[*r, "x"] for r in _rows()], [*HEADER, "n"]), relaxed) == ()
    )


def test_half_the_rows_empty(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows = _rows()
    for i in range(0, 120, 2):
        rows[i] = ["", "", "", ""]
    path = tmp / "half.csv"
    text = _csv(path, rows)
    rep = check_data(text, s)
    assert rep.failed_checks == (
        "missing:age",
        "missing:height_cm",
        "missing:weight_kg",
        "missing:label",
    )
    assert rep.violations[0].count == 60 and "50.0%" in rep.violations[0].message
    # blank lines between rows count as empty rows too (the loader would skip them silently)
    path.write_text("\n\n".join(path.read_text().splitlines()) + "\n")
    assert "missing:age" in check_data(text, s).failed_checks


def test_non_numbers_ragged_rows_and_duplicates(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows: list[list[object]] = [list(r) for r in _rows()]
    rows[2][0] = "twenty"
    rows[3][0] = 33.5  # not a whole number for an integer column
    rows[7] = [*rows[7], "spare"]
    rep = check_data(_csv(tmp / "odd.csv", rows), s)
    assert rep.failed_checks == ("row-length", "type:age")
    ragged, typ = rep.violations
    assert ragged.rows == (8,) and typ.rows == (3, 4) and "'twenty'" in typ.message
    dup = _csv(tmp / "dup.csv", _rows(), ["age", "age", "weight_kg", "label"])
    assert "duplicate-columns" in _names(dup, s)


def test_empty_and_missing_files(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    (tmp / "empty.csv").write_text("")
    assert _names(f"csv:{tmp / 'empty.csv'}", s) == ("not-empty",)
    (tmp / "header.csv").write_text(",".join(HEADER) + "\n")
    assert _names(f"csv:{tmp / 'header.csv'}", s) == ("not-empty",)
    assert _names(f"csv:{tmp / 'nope.csv'}", s) == ("readable",)
    (tmp / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert _names(f"csv:{tmp / 'bin.csv'}", s) == ("readable",)


def test_class_balance(tmp_path: Path) -> None:
    spec = _csv(tmp_path / "ref.csv", _rows())
    s = infer_schema(spec, min_class_fraction=0.2, max_class_fraction=0.5)
    assert (s.label.min_fraction, s.label.max_fraction) == (0.2, 0.5)
    skewed = [r for r in _rows() if r[3] != 2]  # class '2' absent
    rep = check_data(_csv(tmp_path / "skew.csv", skewed), s)
    assert rep.failed_checks == ("class-balance",)
    assert "'2' 0.0%" in rep.violations[0].message
    with pytest.raises(DataError, match="class-balance"):
        infer_schema(_csv(tmp_path / "s2.csv", skewed), labels="012", min_class_fraction=0.2)


def _mnist(folder: Path, images: np.ndarray, labels: np.ndarray) -> str:
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte.gz", images)
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels)
    return f"mnist:{folder}"


def test_wrong_image_shape_and_label_count(tmp_path: Path) -> None:
    s = infer_schema("digits")
    rng = np.random.default_rng(1)
    spec = _mnist(
        tmp_path / "m",
        rng.integers(0, 17, (12, 9, 9), np.uint8),
        (np.arange(11) % 10).astype(np.uint8),
    )
    rep = check_data(spec, s)
    assert rep.failed_checks == ("label-count", "image-shape")
    assert "1x9x9" in rep.violations[1].message and "1x8x8" in rep.violations[1].message


def test_pixels_out_of_range_and_image_csv(tmp_path: Path) -> None:
    s = infer_schema("digits")  # pixel counts 0..16
    images = np.full((10, 8, 8), 3, np.uint8)
    images[4, 0, 0] = 255  # a 0..255 export among 0..16 counts
    rep = check_data(_mnist(tmp_path / "m", images, np.arange(10, dtype=np.uint8)), s)
    assert rep.failed_checks == ("pixel-range",) and rep.violations[0].rows == (5,)
    # An image CSV (header-less, label last), with a fractional pixel and a wrong width.
    folder = tmp_path / "c"
    folder.mkdir()
    lines = [",".join(["1"] * 64 + [str(i % 10)]) for i in range(6)]
    lines[2] = ",".join(["0.5"] * 64 + ["2"])
    with gzip.open(folder / "d.csv.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    assert _names(f"mnist:{folder}", s) == ("pixel-type",)
    with gzip.open(folder / "d.csv.gz", "wt") as f:
        f.write("\n".join(",".join(["1"] * 50 + ["3"]) for _ in range(4)) + "\n")
    assert _names(f"mnist:{folder}", s) == ("image-shape",)


def test_images_against_a_table_schema(tab: tuple[Path, DataSchema]) -> None:
    _, s = tab
    assert _names("digits", s) == ("data-kind",)


def test_every_violation_is_reported_at_once(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    rows = [[a, h, c] for a, h, _w, c in _rows()]
    rows[0][2] = "cat"
    rows[1][0] = -5
    rep = check_data(_csv(tmp / "all.csv", rows, ["age", "height_cm", "label"]), s)
    assert rep.failed_checks == ("column-missing:weight_kg", "range:age", "label-set")
    with pytest.raises(DataCheckError) as exc:
        rep.raise_if_failed()
    assert exc.value.exit_code == 3 and exc.value.failed_checks == rep.failed_checks
    text = str(exc.value)
    for name in rep.failed_checks:
        assert name in text
    assert "row 1 (file line 2)" in text and "row 2 (file line 3)" in text


# ----------------------------------------------------------------------------- schema file


def test_schema_file_round_trip_and_validation(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    s.save(tmp / "schema.json")
    assert load_schema(tmp / "schema.json") == s
    doc = json.loads((tmp / "schema.json").read_text())
    doc["version"] = 2
    (tmp / "v2.json").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="version 2 is not supported"):
        load_schema(tmp / "v2.json")
    doc = schema_to_dict(s)
    doc["features"][0]["min"], doc["features"][0]["max"] = 5, 1
    doc["label"]["values"] = ["0"]
    doc["surprise"] = True
    with pytest.raises(ConfigError) as exc:
        schema_from_dict(doc)
    errors = " | ".join(exc.value.errors)
    assert "surprise" in errors and "label/values" in errors
    doc = schema_to_dict(s)
    doc["features"][0]["min"], doc["features"][0]["max"] = 5, 1
    with pytest.raises(ConfigError, match=r"min <= max"):
        schema_from_dict(doc)
    (tmp / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_schema(tmp / "broken.json")
    with pytest.raises(ConfigError, match="not found"):
        load_schema(tmp / "missing.json")


# ----------------------------------------------------------------------------- loaders


def test_loaders_never_turn_a_typo_into_a_class(tmp_path: Path) -> None:
    rows = _rows()
    rows[16][3] = "cat"
    spec = _csv(tmp_path / "typo.csv", rows)
    with pytest.raises(DataError, match=r"mix numbers and words \(row 17 'cat'\)"):
        load_dataset(spec)
    with pytest.raises(DataError, match=r"outside the declared label set.*row 17 'cat'"):
        load_dataset(spec, labels=("0", "1", "2"))
    # A declared set fixes the classes: a device missing a class keeps the same class ids.
    two = [r for r in _rows() if r[3] != 1]
    train, _ = load_dataset(_csv(tmp_path / "two.csv", two), labels=("0", "1", "2"))
    assert train.num_classes == 3 and set(np.unique(train.y)) == {0, 2}
    folder = tmp_path / "m"
    _mnist(folder, np.zeros((20, 8, 8), np.uint8), np.arange(20, dtype=np.uint8) % 10)
    with pytest.raises(DataError, match="outside the declared label set"):
        load_dataset(f"mnist:{folder}", labels=tuple("01234"))


# ----------------------------------------------------------------------------- device hook


def test_the_device_hook_returns_only_check_names(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    s.save(tmp / "schema.json")
    rows = _rows()
    rows[16][3] = "cat"
    rows[3][0] = 999
    res = check_local_data(_csv(tmp / "dev.csv", rows), tmp / "schema.json")
    assert not res.ok and res.failed_checks == ("range:age", "label-set")
    assert res.reason == "data check failed: range:age, label-set"
    assert "cat" not in res.reason and "999" not in res.reason and "17" not in res.reason
    assert check_local_data(f"csv:{tmp / 'clean.csv'}", s).ok


def test_where_the_client_schema_comes_from(tab: tuple[Path, DataSchema]) -> None:
    tmp, s = tab
    s.save(tmp / "schema.json")
    rows = _rows()
    rows[0][3] = "cat"
    bad = _csv(tmp / "bad.csv", rows)
    cfg = SimpleNamespace(data=SimpleNamespace(dataset=bad, schema=str(tmp / "schema.json")))
    assert check_client_data(cfg, None, {}).failed_checks == ("label-set",)  # simulation
    assert client_label_set(cfg, None, {}) == ("0", "1", "2")
    # A device with its own data never opens a path the run's config names...
    clean = f"csv:{tmp / 'clean.csv'}"
    assert check_client_data(cfg, bad, {}).ok and client_label_set(cfg, bad, {}) is None
    # ... only its own schema (node config `schema`).
    own = {"schema": str(tmp / "schema.json")}
    assert not check_client_data(cfg, bad, own).ok and check_client_data(cfg, clean, own).ok
    no_schema = SimpleNamespace(data=SimpleNamespace(dataset=bad, schema=""))
    assert check_client_data(no_schema, None, {}).ok


def test_the_device_path_stays_light(tab: tuple[Path, DataSchema]) -> None:
    """The ClientApp and its data check never load the web stack, matplotlib, pandas or the report."""
    import subprocess
    import sys

    tmp, s = tab
    s.save(tmp / "schema.json")
    code = (
        "import sys\n"
        "import fedpriv.apps.client, fedpriv.deploy.apps\n"
        "from fedpriv.data.schema import check_local_data\n"
        f"assert check_local_data('csv:{tmp / 'clean.csv'}', '{tmp / 'schema.json'}').ok\n"
        "heavy = ('starlette', 'uvicorn', 'matplotlib', 'pandas', 'fedpriv.report', "
        "'fedpriv.monitor')\n"
        "print(sorted(m for m in sys.modules if m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"
