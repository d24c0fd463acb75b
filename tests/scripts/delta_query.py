"""Reads a Delta table with DuckDB's delta extension: an independent reader
of what Lily writes. Usage: delta_query.py TABLE_DIR SQL, where SQL names
the table as {table}. Prints the result rows as a JSON list of lists."""

import glob
import json
import os
import sys

import duckdb
import duckdb_extension_delta


def main() -> None:
    table_dir, sql = sys.argv[1], sys.argv[2]
    here = os.path.dirname(duckdb_extension_delta.__file__)
    found = glob.glob(os.path.join(here, "extensions", "v*", "delta.duckdb_extension"))
    if not found:
        sys.exit(f"no delta.duckdb_extension under {here}")
    con = duckdb.connect()
    # Loaded from the wheel by path: no network is needed.
    con.execute(f"LOAD '{found[0]}'")
    rows = con.execute(sql.format(table=f"delta_scan('{table_dir}')")).fetchall()
    print(json.dumps([[v if isinstance(v, (int, float, str, type(None))) else str(v) for v in r] for r in rows]))


if __name__ == "__main__":
    main()
