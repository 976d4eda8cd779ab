"""What the request path counts reaches prometheus_client in bulk, every COUNT_FLUSH_SECONDS or when a scrape
asks, exactly as counting each request there would: the same exposition, bucket by bucket."""

from __future__ import annotations

import asyncio

import grpc
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from cnnserve.server.metrics import (
    COUNT_FLUSH_SECONDS,
    LATENCY_BUCKETS,
    HistogramBuffer,
    ServerMetrics,
)

DURATIONS = (0.00004, 0.0001, 0.0003, 0.0003, 0.002, 0.0099, 0.01, 1.5, 31.0, 120.0)
"""Below the first bound, exactly on bounds, between them and above the largest."""


def exposition(fill) -> list[str]:
    """The text a scrape would get after `fill` observed into a fresh histogram series, less its creation time."""
    registry = CollectorRegistry()
    histogram = Histogram("seconds", "durations", ["model"], buckets=LATENCY_BUCKETS, registry=registry)
    fill(histogram.labels("m"))
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def one_by_one(series) -> None:
    for value in DURATIONS:
        series.observe(value)


def buffered(series) -> None:
    buffer = HistogramBuffer(series)
    for value in DURATIONS:
        buffer.observe(value)
    buffer.flush()
    buffer.flush()  # a second flush adds nothing


def test_a_buffered_histogram_exports_what_observing_each_value_exports() -> None:
    assert exposition(buffered) == exposition(one_by_one)


def sample(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def count_some_requests(metrics: ServerMetrics):
    series = metrics.request_series("inference", "m", "1")
    for _ in range(3):
        series.started()
    series.succeeded(0.002)
    series.succeeded(0.02)
    series.failed(grpc.StatusCode.INVALID_ARGUMENT)
    return series


def assert_counted(metrics: ServerMetrics) -> None:
    labels = {"model": "m", "version": "1", "api": "inference"}
    assert sample(metrics, "cnnserve_requests_in_flight", **labels) == 0
    assert sample(metrics, "cnnserve_requests_total", **labels, code="OK") == 2
    assert sample(metrics, "cnnserve_requests_total", **labels, code="INVALID_ARGUMENT") == 1
    assert sample(metrics, "cnnserve_request_duration_seconds_count", **labels) == 2
    assert sample(metrics, "cnnserve_request_duration_seconds_bucket", **labels, le="0.0025") == 1
    assert sample(metrics, "cnnserve_request_duration_seconds_sum", **labels) == 0.022


async def test_what_requests_count_reaches_prometheus_within_the_flush_interval() -> None:
    metrics = ServerMetrics()
    series = count_some_requests(metrics)
    await asyncio.sleep(0)
    assert sample(metrics, "cnnserve_requests_total", model="m", version="1", api="inference", code="OK") == 0
    await asyncio.sleep(COUNT_FLUSH_SECONDS * 2)
    assert_counted(metrics)

    series.started()
    await asyncio.sleep(COUNT_FLUSH_SECONDS * 2)
    assert sample(metrics, "cnnserve_requests_in_flight", model="m", version="1", api="inference") == 1


async def test_a_scrape_from_another_thread_brings_the_counts_in_at_once() -> None:
    metrics = ServerMetrics()
    count_some_requests(metrics)
    await asyncio.to_thread(metrics.flush_threadsafe)
    assert_counted(metrics)


def test_outside_an_event_loop_counts_reach_prometheus_at_once() -> None:
    metrics = ServerMetrics()
    series = metrics.request_series("image", "m", "1")
    series.started()
    series.succeeded(0.5)
    assert sample(metrics, "cnnserve_requests_total", model="m", version="1", api="image", code="OK") == 1
