"""``docs/metrics.md`` lists every metric a scrape shows (name, type, labels), and nothing a scrape does not."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import QUERY, REPORTER, replace
from tests.support.metrics import documented

LOAD = "/api/v4/projects/1/product_analytics/request/load"


def scraped_families(text: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    found = {}
    for family in text_string_to_metric_families(text):
        labels: set[str] = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        name = f"{family.name}_total" if family.type == "counter" else family.name  # as a query names it
        found[name] = (family.type, tuple(sorted(labels)))
    return found


@pytest.mark.handed_over  # metrics and readiness are aiohttp's; the load goes on a connection already handed over
async def test_docs_metrics_md_matches_a_scrape(make_client, shared_settings, cube):
    settings = replace(shared_settings, "server", metrics_project_label=True)
    client = await make_client(settings)
    assert (await client.get("/-/readiness")).status == 200  # cube_up is what readiness found
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    text = await (await client.get("/-/metrics")).text()
    scraped = scraped_families(text)
    docs = documented()
    assert sorted(set(scraped) - set(docs)) == [], "scraped but not in docs/metrics.md"
    assert sorted(set(docs) - set(scraped)) == [], "in docs/metrics.md but not scraped"
    for name, (kind, labels) in scraped.items():
        doc_kind, doc_labels = docs[name]
        assert doc_kind == kind, name
        # a family may show no sample (nothing counted yet): its documented labels stand
        assert not labels or doc_labels == labels, (name, doc_labels, labels)


@pytest.mark.handed_over  # metrics are aiohttp's; the load goes on a connection already handed over
async def test_a_scrape_passes_promtools_lint(make_client, shared_settings, cube, tmp_path):
    """Prometheus' own linter (``promtool check metrics``: names, units, suffixes, help texts) finds nothing."""
    settings = replace(shared_settings, "server", metrics_project_label=True)
    client = await make_client(settings)
    assert (await client.get("/-/readiness")).status == 200
    assert (await client.post(LOAD, json={"query": QUERY}, headers=REPORTER)).status == 200
    text = await (await client.get("/-/metrics")).text()
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is installed by make test-tools and .ci/run"
    linted = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60, check=False
    )
    assert (linted.returncode, linted.stdout + linted.stderr) == (0, "")
