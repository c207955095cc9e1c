"""Reading a metrics endpoint in tests: one scrape as ``{(sample name, labels): value}``."""

from __future__ import annotations

import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


def scrape_text(port: int) -> str:
    status, body = get(port, "/metrics")
    assert status == 200, body
    return body


def parse(text: str) -> Samples:
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = float(sample.value)
    return out


def scrape(port: int) -> Samples:
    return parse(scrape_text(port))


def value(samples: Samples, name: str, /, **labels: str) -> float:
    """The sample ``name`` with exactly ``labels``; fails the test when it is missing."""
    key = (name, frozenset(labels.items()))
    assert key in samples, f"{name}{labels} not scraped; have {sorted({k[0] for k in samples})}"
    return samples[key]
