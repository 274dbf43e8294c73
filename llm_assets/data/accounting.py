"""Nothing vanishes: for every data step, rows in = rows kept + rows quarantined by that step's run.

Each table version records in its Delta commit the run that wrote it and the table version it read
(`input`); every quarantine row records its `run_id` and `asset`. So the books balance per step:

    rows(input @ version read) == rows(output @ version written) + quarantined(run_id, asset)

Read with delta-rs and pyarrow only: the quarantine table is scanned for two columns. Tables in object
storage need the lakehouse's `storage_options()` (`lineage` takes them from the lakehouse itself).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow.compute as pc
from deltalake import DeltaTable

from resources.lakehouse import LakehouseResource, TableVersion


@dataclass(frozen=True)
class StepBalance:
    """One step's books: what it read, kept and quarantined."""

    asset: str
    input: str
    rows_in: int
    kept: int
    quarantined: int

    @property
    def balanced(self) -> bool:
        return self.rows_in == self.kept + self.quarantined


def commit_info(table: TableVersion, storage_options: dict[str, str] | None = None) -> dict:
    """The custom metadata of the Delta commit that wrote `table`."""
    history = DeltaTable(table.uri, storage_options=storage_options).history()
    return next((h for h in history if h.get("version") == table.version), {})


def pinned(lakehouse: LakehouseResource, name: str, version: int) -> TableVersion:
    dt = lakehouse.delta_table(name, version)
    rows = dt.get_add_actions(flatten=True).column("num_records").to_pylist()
    return TableVersion(name, lakehouse.uri(name), version, int(sum(r or 0 for r in rows)))


def lineage(lakehouse: LakehouseResource, table: TableVersion) -> list[TableVersion]:
    """`table` and the versions it was made from, following the `input` recorded in each Delta commit."""
    chain = [table]
    while True:
        name, _, version = (commit_info(chain[-1], lakehouse.storage_options()).get("input") or "").rpartition("@")
        if not name:
            return chain
        chain.append(pinned(lakehouse, name, int(version)))


def step_balances(chain: list[TableVersion], quarantine_uri: str | None,
                  storage_options: dict[str, str] | None = None) -> list[StepBalance]:
    """Balances of every step in `chain` (a table followed by the versions it was made from)."""
    by_name = {t.name: t for t in chain}
    quarantine = None
    if quarantine_uri is not None:
        dataset = DeltaTable(quarantine_uri, storage_options=storage_options).to_pyarrow_dataset()
        if {"run_id", "asset"} <= set(dataset.schema.names):
            quarantine = dataset.to_table(columns=["run_id", "asset"])
    balances = []
    for table in chain:
        info = commit_info(table, storage_options)
        name, _, version = (info.get("input") or "").rpartition("@")
        if not name or name not in by_name:
            continue
        source = by_name[name]
        quarantined = 0
        if quarantine is not None:
            mask = pc.and_(pc.equal(quarantine["run_id"], info.get("run_id", "")),
                           pc.equal(quarantine["asset"], table.name))
            quarantined = int(pc.sum(mask.cast("int64")).as_py() or 0)
        balances.append(StepBalance(table.name, f"{name}@{version}", source.rows, table.rows, quarantined))
    return balances


def balances_markdown(balances: list[StepBalance]) -> str:
    lines = ["| step | input | rows in | kept | quarantined | balanced |", "|---|---|---:|---:|---:|---|"]
    lines += [f"| {b.asset} | {b.input} | {b.rows_in:,} | {b.kept:,} | {b.quarantined:,} | "
              f"{'yes' if b.balanced else '**no**'} |" for b in balances]
    return "\n".join(lines)
