#!/usr/bin/env python3
"""Migrates stock levels from the legacy CSV export into the service's import format."""

import csv
import json
import sys


def convert(row):
    # TODO: the legacy export sometimes has a trailing space in the warehouse column.
    return {"warehouse": row["warehouse"], "sku": row["sku"], "stock": int(row["qty"])}


def main(path):
    with open(path, newline="") as f:
        rows = [convert(r) for r in csv.DictReader(f)]
    json.dump(rows, sys.stdout, indent=2)


if __name__ == "__main__":
    main(sys.argv[1])
