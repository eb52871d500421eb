"""Validate the data: what the pipeline wrote to a file data lake, read with DuckDB through
the same partitioning as the Glue table (Hive `symbol=`/`date=` folders).

    python scripts/validate-lake.py LAKE_DIR [--json]

The query is the one README.md shows for Athena, over read_parquet instead of the table:
rows per symbol, first and last observation, lowest and highest price.
"""
import json
import sys

import duckdb

QUERY = """
SELECT symbol,
       count(*)                AS rows,
       count(DISTINCT run_id)  AS runs,
       min(observed_at)        AS first,
       max(observed_at)        AS last,
       min(price)              AS low,
       max(price)              AS high
FROM read_parquet('{lake}/**/*.parquet', hive_partitioning = true)
GROUP BY symbol
ORDER BY symbol
"""


def main():
    lake = sys.argv[1].rstrip("/")
    rel = duckdb.sql(QUERY.format(lake=lake.replace("'", "''")))
    if "--json" in sys.argv:
        cols = rel.columns
        rows = [dict(zip(cols, (str(v) if k in ("first", "last") else v for k, v in zip(cols, r))))
                for r in rel.fetchall()]
        print(json.dumps(rows))
    else:
        rel.show()


if __name__ == "__main__":
    main()
