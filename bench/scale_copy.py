"""Bulk synthesis of runs for `bench/scale.py`: a real run's rows copied in the instance's own
database, thousands at a time (docs/performance.md "At a lab's scale").

Why rows and not `DagsterInstance.handle_new_event`: through the instance API a synthesised run
costs what a real run's bookkeeping costs (≈ 53 events, each a few SQL statements and commits:
0.4 s a run on this shared machine, over an hour for 10,000). Here the rows a real run left are
copied within one transaction per batch; what Dagster then reads is the same rows:

- `event_logs`: every event of the run's Dagster runs and its runless `run_spec` materialization,
  the run ids and the partition key rewritten in the stored event (the JSON Dagster deserialises)
  and in the indexed columns;
- the rows that point at an event (`asset_event_tags`, `asset_check_executions`), re-pointed at the
  copied event's new id (in the stored evaluation too);
- `runs` and `run_tags` of each Dagster run, and the run-month key in `dynamic_partitions`;
- `asset_keys`: the latest materialization of each asset, as Dagster updates it per event.

The tables are reflected from the database (SQLAlchemy's public API): the same code writes the
default SQLite instance and the Postgres one of `deploy/`. `bench/scale.py` checks that the
result reads as real runs do: same instance bytes per run-month, same page timings at equal N.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

from sqlalchemy import MetaData, Table, select, update
from sqlalchemy.engine import Connection, Engine

_STORAGE_ID = re.compile(r'"storage_id": (\d+)')


@dataclass
class RunRows:
    """A template run's rows: the ids to rewrite and what to copy."""

    run_id: str
    key: str
    dagster_run_ids: list[str]
    events: list[dict]
    tags_by_event: dict[int, list[dict]]
    checks: list[dict]
    runs: list[dict]
    run_tags: list[dict]


def _tables(engine: Engine, *names: str) -> dict[str, Table]:
    metadata = MetaData()
    metadata.reflect(bind=engine, only=list(names))
    return {name: metadata.tables[name] for name in names}


def read_template(events_engine: Engine, runs_engine: Engine, run_id: str, key: str) -> RunRows:
    ev = _tables(events_engine, "event_logs", "asset_event_tags", "asset_check_executions")
    rn = _tables(runs_engine, "runs", "run_tags")
    with runs_engine.connect() as conn:
        tag = rn["run_tags"].c
        dagster_ids = [
            r[0] for r in conn.execute(select(tag.run_id).where((tag.key == "quantlab/run_id") & (tag.value == run_id)))
        ]
        runs = [dict(r._mapping) for r in conn.execute(select(rn["runs"]).where(rn["runs"].c.run_id.in_(dagster_ids)))]
        run_tags = [dict(r._mapping) for r in conn.execute(select(rn["run_tags"]).where(tag.run_id.in_(dagster_ids)))]
    with events_engine.connect() as conn:
        log = ev["event_logs"].c
        where = log.run_id.in_(dagster_ids) | ((log.run_id == "") & (log.partition == key))
        events = [dict(r._mapping) for r in conn.execute(select(ev["event_logs"]).where(where).order_by(log.id))]
        ids = [e["id"] for e in events]
        tags_by_event: dict[int, list[dict]] = {}
        for r in conn.execute(select(ev["asset_event_tags"]).where(ev["asset_event_tags"].c.event_id.in_(ids))):
            tags_by_event.setdefault(r._mapping["event_id"], []).append(dict(r._mapping))
        checks_table = ev["asset_check_executions"]
        checks = [
            dict(r._mapping) for r in conn.execute(select(checks_table).where(checks_table.c.run_id.in_(dagster_ids)))
        ]
    return RunRows(run_id, key, dagster_ids, events, tags_by_event, checks, runs, run_tags)


class Copier:
    """Copies template runs into an instance's databases (the same engine twice on Postgres)."""

    def __init__(self, events_engine: Engine, runs_engine: Engine):
        self.events_engine, self.runs_engine = events_engine, runs_engine
        self.ev = _tables(
            events_engine,
            "event_logs",
            "asset_event_tags",
            "asset_check_executions",
            "dynamic_partitions",
            "asset_keys",
        )
        self.rn = _tables(runs_engine, "runs", "run_tags")

    def copy(self, templates: list[RunRows]) -> list[dict[str, str]]:
        """One new run per template given, in one transaction per database; each new run's
        rewrites (template id → new id, for the quantlab run id and each Dagster run id)."""
        plans = [self._plan(template) for template in templates]
        with self.events_engine.begin() as ev_conn:
            latest: dict[str, tuple] = {}
            for template, swaps in plans:
                latest.update(self._copy_events(ev_conn, template, swaps))
            self._update_asset_keys(ev_conn, latest)
        with self.runs_engine.begin() as run_conn:
            for template, swaps in plans:
                self._copy_runs(run_conn, template, swaps)
        return [swaps for _, swaps in plans]

    @staticmethod
    def _plan(template: RunRows) -> tuple[RunRows, dict[str, str]]:
        swaps = {template.run_id: str(uuid.uuid4())}
        swaps.update({d: str(uuid.uuid4()) for d in template.dagster_run_ids})
        return template, swaps

    @staticmethod
    def _swapped(value, swaps: dict[str, str]):
        if not isinstance(value, str):
            return value
        for old, new in swaps.items():
            value = value.replace(old, new)
        return value

    def _row(self, row: dict, swaps: dict[str, str], **overrides) -> dict:
        out = {k: self._swapped(v, swaps) for k, v in row.items() if k != "id"}
        out.update(overrides)
        return out

    def _copy_events(self, conn: Connection, template: RunRows, swaps: dict[str, str]) -> dict[str, tuple]:
        ev = self.ev
        new_ids: dict[int, int] = {}
        latest: dict[str, tuple] = {}
        rows = [self._row(event, swaps) for event in template.events]
        table = ev["event_logs"]
        # One statement for the run's events (batched by SQLAlchemy), their new ids in row order.
        inserted = conn.execute(table.insert().returning(table.c.id, sort_by_parameter_order=True), rows)
        for event, row, (new_id,) in zip(template.events, rows, inserted.all(), strict=True):
            new_ids[event["id"]] = new_id
            if row["dagster_event_type"] == "ASSET_MATERIALIZATION" and row["asset_key"]:
                latest[row["asset_key"]] = (new_id, row)
        tags = [
            self._row(tag, swaps, event_id=new_ids[event_id])
            for event_id, rows in template.tags_by_event.items()
            for tag in rows
        ]
        if tags:
            conn.execute(ev["asset_event_tags"].insert(), tags)

        def repoint(text):
            return _STORAGE_ID.sub(lambda m: f'"storage_id": {new_ids.get(int(m.group(1)), int(m.group(1)))}', text)

        checks = []
        for check in template.checks:
            row = self._row(check, swaps)
            row["evaluation_event"] = repoint(row["evaluation_event"]) if row["evaluation_event"] else None
            for col in ("evaluation_event_storage_id", "materialization_event_storage_id"):
                if row[col] is not None:
                    row[col] = new_ids.get(row[col], row[col])
            checks.append(row)
        if checks:
            conn.execute(ev["asset_check_executions"].insert(), checks)
        conn.execute(
            ev["dynamic_partitions"]
            .insert()
            .values(partitions_def_name="run_month", partition=self._swapped(template.key, swaps))
        )
        return latest

    def _update_asset_keys(self, conn: Connection, latest: dict[str, tuple]) -> None:
        keys = self.ev["asset_keys"]
        for asset_key, (_storage_id, row) in latest.items():
            values = {"last_materialization_timestamp": row["timestamp"]}
            if row["run_id"]:
                values["last_run_id"] = row["run_id"]
            conn.execute(update(keys).where(keys.c.asset_key == asset_key).values(**values))

    def _copy_runs(self, conn: Connection, template: RunRows, swaps: dict[str, str]) -> None:
        if template.runs:
            conn.execute(self.rn["runs"].insert(), [self._row(r, swaps) for r in template.runs])
        if template.run_tags:
            conn.execute(self.rn["run_tags"].insert(), [self._row(t, swaps) for t in template.run_tags])
