"""The one Markdown table renderer: columns, formats, missing values, escaping."""

import math

import numpy as np
import pytest

from transmed.core.tables import format_cell, markdown_table


def test_columns_default_to_keys_in_order_of_first_appearance():
    text = markdown_table([{"a": 1, "b": "x"}, {"c": 2.5, "a": 3}])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1 | x |  |", "| 3 |  | 2.5 |"]
    assert not text.endswith("\n")


def test_chosen_columns_and_formats_apply_to_numbers_only():
    rows = [{"model": "tiny", "ms": 1234.5678, "ratio": "**1.07**", "n": 3, "ok": True}, {"model": "small", "ms": 7.0, "ratio": 1.26}]
    text = markdown_table(rows, ["model", "ms", "ratio", "n", "ok"], {"ms": ",.1f", "ratio": ".3f", "n": "d", "ok": "d"})
    assert text.splitlines()[2:] == ["| tiny | 1,234.6 | **1.07** | 3 | True |", "| small | 7.0 | 1.260 |  |  |"]


@pytest.mark.parametrize("missing", [None, math.nan, np.float32("nan"), float("nan")])
def test_missing_values_are_empty_cells(missing):
    assert format_cell(missing, ".2f") == "" and format_cell(missing) == ""


def test_numpy_scalars_format_like_python_numbers():
    assert format_cell(np.float64(2.0), ".1f") == "2.0" and format_cell(np.int64(3), "d") == "3" and format_cell(np.float32(0.5)) == "0.5"


def test_pipes_and_newlines_cannot_break_a_row():
    text = markdown_table([{"a|b": "x | y\nz"}])
    assert text.splitlines() == ["| a\\|b |", "|---|", "| x \\| y z |"]


def test_pandas_records_render(tmp_path):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"run": ["r1", "r2"], "val/auc": [0.81234, None]})
    assert markdown_table(frame.to_dict("records"), formats={"val/auc": ".3f"}).splitlines()[2:] == ["| r1 | 0.812 |", "| r2 |  |"]


def test_no_columns_is_an_error():
    with pytest.raises(ValueError):
        markdown_table([])
