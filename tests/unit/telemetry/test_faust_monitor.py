"""The cached-labels Faust sensor exports what faust-streaming's PrometheusMonitor exports."""

from __future__ import annotations

from types import SimpleNamespace

from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from streams.telemetry.faust_monitor import CachedLabelsMonitor


class Stream:
    """What the sensor reads of a Faust stream."""

    def __init__(self, label: str) -> None:
        self.shortlabel = f"Stream: {label}"
        self.task_owner = TaskOwner()


class TaskOwner:
    """Faust's Monitor keeps the task owning a stream by weak reference."""


def exported_after_the_same_traffic(monitor_class: type) -> list[str]:
    registry = CollectorRegistry(auto_describe=True)
    monitor = monitor_class(metrics=FaustMetrics.create(registry, "faust"))
    streams = [Stream("Topic: scale.position-inputs"), Stream("Topic: scale.position-commands")]
    for offset in range(7):
        for partition in (0, 3, 11):
            tp = TP("scale.position-inputs" if partition != 3 else "scale.position-commands", partition)
            monitor.track_tp_end_offset(tp, offset + 10)
            monitor.on_message_in(tp, offset, SimpleNamespace(time_in=None))
            stream = streams[partition % 2]
            state = monitor.on_stream_event_in(tp, offset, stream, None)
            monitor.on_stream_event_out(tp, offset, stream, None, state)
    lines = generate_latest(registry).decode().splitlines()
    # Latencies, runtimes (their buckets and sums) and creation times measure time; the
    # counters, gauges and observation counts must be equal.
    return [line for line in lines if not line.startswith("#") and "_created" not in line
            and ("latency" not in line and "runtime_ms" not in line or "_count" in line)]


def test_the_cached_labels_monitor_exports_the_same_counters_and_gauges_as_faust_s():
    ours, faust_s = exported_after_the_same_traffic(CachedLabelsMonitor), exported_after_the_same_traffic(
        PrometheusMonitor)

    assert ours == faust_s
    assert any(line.startswith("faust_messages_received_per_topics_partition{") for line in ours)
    assert any(line.startswith("faust_total_events_per_stream_total{") for line in ours)
    assert any(line.startswith("faust_topic_partition_end_offset{") for line in ours)
