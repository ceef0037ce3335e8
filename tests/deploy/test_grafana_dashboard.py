"""deploy/grafana/: every SQL query of the dashboard, with Grafana's macros and variables
substituted as Grafana does, runs against a migrated PostgreSQL holding a fleet's data
and returns rows; the panels name the provisioned data sources."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from iotpipe.app import App
from iotpipe.model import format_micros, now_micros
from tests.fleet import Fleet, fill, fleet_settings
from tests.servers import PostgresServer

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
DASHBOARD = json.loads((GRAFANA / "dashboards" / "iotpipe.json").read_text())


def sql_targets(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, SQL) of every query: panels (rows included), variables, annotations."""

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))

    for panel in panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if "rawSql" in target:
                yield f"panel {panel['title']!r} {target['refId']}", target["rawSql"]
    for variable in dashboard["templating"]["list"]:
        if variable["datasource"]["uid"] == "iotpipe-postgres":
            yield f"variable {variable['name']}", variable["query"]
    for annotation in dashboard["annotations"]["list"]:
        if "rawSql" in annotation.get("target", {}):
            yield f"annotation {annotation['name']}", annotation["target"]["rawSql"]


def sqlstring(value: str) -> str:
    """Grafana's `${var:sqlstring}`: quoted, with every ' doubled."""
    return "'" + value.replace("'", "''") + "'"


def substitute(query: str, start: str, end: str, variables: dict[str, str]) -> str:
    """Grafana's PostgreSQL macros (as its documentation gives them) and variables."""
    query = re.sub(r"\$__timeFilter\(([^)]+)\)", rf"\1 BETWEEN '{start}' AND '{end}'", query)
    query = query.replace("$__timeFrom()", f"'{start}'").replace("$__timeTo()", f"'{end}'")
    for name, value in variables.items():
        query = query.replace(f"${{{name}:sqlstring}}", sqlstring(value))
    left = re.findall(r"\$\{?\w+", query)
    assert not left, f"unsubstituted Grafana syntax {left} in {query}"
    return query


@pytest.fixture(scope="module")
def filled(postgres: PostgresServer) -> Iterator[tuple[str, Fleet]]:
    url = postgres.create_database("grafana_dashboard")
    app = App(fleet_settings(url))
    try:
        yield url, fill(app)
    finally:
        app.close()


def test_every_sql_query_returns_rows_over_a_filled_database(filled: tuple[str, Fleet]) -> None:
    url, fleet = filled
    start, end = format_micros(fleet.end - 7 * 86_400_000_000), format_micros(now_micros())  # now-7d .. now
    queries = list(sql_targets(DASHBOARD))
    assert len(queries) >= 12
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as conn:
            for where, query in queries:
                for metric in fleet.metrics:  # the repeated panel runs once per metric
                    variables = {"device": fleet.spike_device, "metric": metric}
                    rows = conn.execute(text(substitute(query, start, end, variables))).fetchall()
                    assert rows, f"{where} returned no rows for {metric}"
    finally:
        engine.dispose()


def test_a_quote_in_a_device_id_stays_inside_the_sql_string() -> None:
    query = "SELECT 1 WHERE 'x' = ${device:sqlstring}"
    assert substitute(query, "a", "b", {"device": "o'brien"}) == "SELECT 1 WHERE 'x' = 'o''brien'"


def test_panels_read_the_provisioned_data_sources_by_uid() -> None:
    uids = {
        source["uid"]
        for path in (GRAFANA / "provisioning" / "datasources").glob("*.yaml")
        for source in yaml.safe_load(path.read_text())["datasources"]
    }
    used = set()
    for panel in DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            used.add(target["datasource"]["uid"])
    assert used == uids == {"iotpipe-postgres", "iotpipe-prometheus"}
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def test_the_dashboard_shows_fleet_history_and_ingest_from_prometheus() -> None:
    titles = {panel["title"] for panel in DASHBOARD["panels"]}
    assert {
        "Fleet",
        "$device · $metric",
        "Readings stored per second",
        "Ingest lag (event time to commit)",
    } <= titles
    exprs = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets", []) if "expr" in t]
    assert any("iotpipe_ingest_readings_total" in e for e in exprs)
    assert any("iotpipe_ingest_lag_seconds_bucket" in e for e in exprs)
