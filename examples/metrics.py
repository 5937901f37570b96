"""Metrics: pgdurable's OpenTelemetry metrics, served to Prometheus.

    pip install 'pgdurable[otel]' opentelemetry-sdk opentelemetry-exporter-prometheus
    python examples/metrics.py

With no PGDURABLE_DSN/DATABASE_URL set it runs on the embedded Postgres.
It runs a few receipts (one fails for good), then scrapes its own
/metrics endpoint, as Prometheus would, and prints pgdurable's samples
(all but the histograms' buckets).
"""

from __future__ import annotations

import urllib.request

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

from pgdurable import Context, Durable, Event
from pgdurable.embedded import dsn_or_embedded


def build(dsn: str, provider: MeterProvider, schema: str = "metrics") -> Durable:
    """The app: a receipt's OCR fails for good when its key says so."""
    app = Durable(dsn, schema=schema, meter_provider=provider, retry_backoff=("50ms", "1s"))

    def ocr(key: str) -> float:
        if key.startswith("blurry"):
            raise ValueError("no total in the text")
        return 12.5

    @app.function(id="process-receipt", event="receipt/process", retries=1)
    def process_receipt(ctx: Context) -> float:
        image = ctx.step.run("download", lambda: f"bytes of {ctx.event.data['key']}")
        return ctx.step.run("ocr", ocr, image.removeprefix("bytes of "))

    return app


def scrape(app: Durable, port: int) -> list[str]:
    """Run four receipts (one fails, is retried once, and fails), then read
    /metrics on `port` and return pgdurable's samples."""
    app.migrate()
    app.start(threads=2, poll_interval=0.2)
    try:
        keys = ["a.jpg", "b.jpg", "c.jpg", "blurry.jpg"]
        events = app.send([Event("receipt/process", {"key": key}) for key in keys])
        for event_id in events:
            app.wait_for_run(app.runs_for_event(event_id)[0].id, timeout=60)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
            text = page.read().decode()
    finally:
        app.stop()
    return [line for line in text.splitlines()  # the histograms' buckets left out
            if line.startswith("pgdurable_") and "_bucket{" not in line]


def serve(port: int) -> MeterProvider:
    """A meter provider whose metrics Prometheus scrapes at :port/metrics."""
    start_http_server(port, addr="127.0.0.1")
    return MeterProvider(metric_readers=[PrometheusMetricReader()])


if __name__ == "__main__":
    print("\n".join(scrape(build(dsn_or_embedded(), serve(9464)), 9464)))
