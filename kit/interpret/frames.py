"""Frames to CSV and back unchanged: each file's dtypes and index names travel beside it in a small JSON-able
schema, so nothing is renamed, retyped or pickled on the way (`kit.interpret.interpretation` saves with these).

Text columns hold strings, missing text as '' (`tidy` makes them so): CSV cannot tell a missing string from an
empty one, and a domain may be named ''.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd

# pandas 3 parses floats exactly by default and deprecates the option; pandas 2's default can be off by an ulp
EXACT = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}
TEXT = "text"
"""The schema's dtype for text columns (object or string dtype): read back as `str`."""


def _is_text(column: pd.Series) -> bool:
    return pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)


def tidy(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy whose text columns are strings (missing as '') and whose floats are float64."""
    out = frame.copy()
    for name in out.columns:
        if _is_text(out[name]):
            out[name] = out[name].map(lambda v: "" if v is None or v is pd.NA or (isinstance(v, float) and
                                                                                 np.isnan(v)) else str(v))
            out[name] = out[name].astype(str)
        elif pd.api.types.is_float_dtype(out[name].dtype):
            out[name] = out[name].astype(np.float64)
    return out


def write_frame(frame: pd.DataFrame, path: Path) -> dict:
    """Write `frame` (see `tidy`) to `path` as CSV, its index as leading columns when it has names; returns the
    schema `read_frame` needs."""
    index = [n for n in frame.index.names if n is not None]
    flat = frame.reset_index() if index else frame
    # every string quoted: a token such as '\r', '' or 'nan' stays that string
    flat.to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    return {"index": index, "dtypes": {c: TEXT if _is_text(flat[c]) else str(flat[c].dtype) for c in flat.columns}}


def read_frame(path: Path, schema: dict) -> pd.DataFrame:
    """The frame `write_frame` wrote to `path`, with the dtypes and index of its `schema`."""
    dtypes = schema["dtypes"]
    frame = pd.read_csv(path, dtype={c: str if t == TEXT else t for c, t in dtypes.items()}, keep_default_na=False,
                        na_values={c: [""] for c, t in dtypes.items() if t != TEXT}, **EXACT)
    return frame.set_index(schema["index"]) if schema["index"] else frame


def plain(value):
    """`value` with numpy scalars and arrays turned into Python numbers and lists, dicts and lists walked (JSON)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value.tolist() if isinstance(value, (np.generic, np.ndarray)) else value
