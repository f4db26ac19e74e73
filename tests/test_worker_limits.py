"""Resource limits: the pure state machine, and a worker driven by injected readings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmo.proto.messages import GpuReading, TaskAssign, TaskDone, TaskFailed, TaskStarted, Telemetry
from llmo.worker.limits import Level, Limits, LimitsConfig, assess
from tests.worker_fixtures import (  # noqa: F401  (fixtures)
    FakeTelemetry,
    brain_factory,
    worker_factory,
)

pytestmark = pytest.mark.timeout(60)


def gpu(temp=None, used=None, total=6144, power=None) -> Telemetry:
    reading = GpuReading(
        index=0, temperature_c=temp, vram_used_mb=used, vram_total_mb=total, power_w=power
    )
    return Telemetry(gpu_available=True, gpus=(reading,))


def test_each_limit_is_a_warning():
    c = LimitsConfig()
    assert assess(c, gpu(temp=74)).warnings == ()
    assert "75" in assess(c, gpu(temp=75)).warnings[0]
    assert "VRAM" in assess(c, gpu(used=5900)).warnings[0]  # 96 %
    assert "140 W" in assess(c, gpu(power=141)).warnings[0]
    assert assess(c, Telemetry(cpu_temperature_c=80)).warnings
    assert assess(c, gpu(temp=90)).critical
    assert assess(c, gpu()).clear  # no readings, no breach


def test_pause_hysteresis_and_growing_backoff():
    limits = Limits()
    assert limits.update(gpu(temp=60), 0) is Level.OK
    assert limits.update(gpu(temp=76), 10) is Level.CONSTRAINED
    assert limits.until == 40  # a 30 s pause
    assert limits.update(gpu(temp=60), 20) is Level.CONSTRAINED  # still paused
    # The pause is over but 73 °C is not 4 °C under the warning: a longer pause.
    assert limits.update(gpu(temp=73), 40) is Level.CONSTRAINED
    assert limits.until == pytest.approx(40 + 54)
    assert limits.update(gpu(temp=71), 94) is Level.OK
    # The next breach pauses longer still, up to 300 s.
    pauses = []
    now = 100.0
    for _ in range(6):
        limits.update(gpu(temp=80), now)
        pauses.append(round(limits.until - now, 2))
        now = limits.until
    assert pauses == [97.2, 174.96, 300, 300, 300, 300]


def test_backoff_starts_over_after_a_long_clear_spell():
    limits = Limits()
    limits.update(gpu(temp=80), 0)
    limits.update(gpu(temp=50), 30)
    assert limits.level is Level.OK and limits.backoff == pytest.approx(54)
    limits.update(gpu(temp=50), 30 + 300)
    assert limits.backoff == 30


def test_critical_stops_everything_then_pauses():
    limits = Limits()
    assert limits.update(gpu(temp=91), 0) is Level.CRITICAL
    assert "critical" in limits.describe()
    assert limits.update(gpu(temp=85), 5) is Level.CONSTRAINED
    assert limits.update(gpu(temp=60), 31) is Level.OK


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 120), st.floats(0, 400)), min_size=1, max_size=40))
def test_resumes_only_on_clear_readings(steps):
    c = LimitsConfig()
    limits = Limits(c)
    now = 0.0
    for temp, dt in steps:
        now += dt
        before = limits.level
        level = limits.update(gpu(temp=temp), now)
        assert c.backoff_s <= limits.backoff <= c.backoff_max_s
        if level is Level.OK and before is not Level.OK:
            assert temp <= c.gpu_warn_c - c.resume_margin_c
        if temp >= c.gpu_critical_c:
            assert level is Level.CRITICAL
        elif temp >= c.gpu_warn_c:
            assert level is Level.CONSTRAINED


# --- a worker with injected readings ----------------------------------------------------


def job(tmp_path, task_id, cls, command="true", **fields) -> TaskAssign:
    return TaskAssign(
        dst="gpu-t",
        batch_id="b",
        task_id=task_id,
        attempt_id=f"b:{task_id}:1",
        task_class=cls,
        command=command,
        batch_path=str(tmp_path),
        **fields,
    )


def test_a_hot_gpu_constrains_the_worker_until_it_cools(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    readings = FakeTelemetry(gpu(temp=60), vram_total_mb=6144)
    fast = LimitsConfig(backoff_s=0.5, backoff_max_s=2.0)
    brain = brain_factory(running_broker.endpoint)
    worker_factory(running_broker.endpoint, gpus=(0,), telemetry=readings, limits=fast)
    beat = brain.heartbeat("gpu-t", state="cold")
    assert beat.vram_budget_mb == int(6144 * 0.8)

    readings.reading = gpu(temp=82)
    beat = brain.heartbeat("gpu-t", state="constrained")
    assert "GPU 0 at 82 °C" in beat.constraint
    brain.send(job(tmp_path, "gpu-work", "script"))
    refused = brain.expect(TaskFailed, attempt_id="b:gpu-work:1")
    assert refused.reason == "refused" and "takes only cpu work" in refused.error
    brain.send(job(tmp_path, "cpu-work", "cpu"))
    brain.expect(TaskDone, attempt_id="b:cpu-work:1")

    readings.reading = gpu(temp=72)  # under the warning, not yet 4 °C under it
    brain.heartbeat("gpu-t", state="constrained")
    readings.reading = gpu(temp=60)
    beat = brain.heartbeat("gpu-t", state="cold", timeout=10)
    assert beat.constraint == ""
    brain.send(job(tmp_path, "gpu-again", "script"))
    brain.expect(TaskDone, attempt_id="b:gpu-again:1")


def test_critical_temperature_stops_gpu_work(
    running_broker,
    brain_factory,  # noqa: F811
    worker_factory,  # noqa: F811
    tmp_path,
):
    readings = FakeTelemetry(gpu(temp=60), vram_total_mb=6144)
    brain = brain_factory(running_broker.endpoint)
    worker_factory(
        running_broker.endpoint, gpus=(0,), slots=2, telemetry=readings, stop_grace_s=0.5
    )
    brain.heartbeat("gpu-t", state="cold")
    brain.send(job(tmp_path, "gpu-long", "script", "sleep 300"))
    brain.send(job(tmp_path, "cpu-long", "cpu", "sleep 2"))
    brain.expect(TaskStarted, attempt_id="b:gpu-long:1")
    brain.expect(TaskStarted, attempt_id="b:cpu-long:1")
    readings.reading = gpu(temp=93)
    failed = brain.expect(TaskFailed, attempt_id="b:gpu-long:1")
    assert failed.reason == "aborted" and "critical" in failed.error
    brain.expect(TaskDone, attempt_id="b:cpu-long:1")  # CPU work is not on the GPU
