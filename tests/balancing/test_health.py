"""Outlier detection, active checks, arrivals and limits with ``now`` injected (pure)."""

from __future__ import annotations

from fedproxy.balancing.health import JITTER_FRACTION, ActiveHealth, Arrivals, OutlierDetector
from fedproxy.balancing.limits import CircuitBreaker, Limits, RetryBudget
from fedproxy.config import BalancingConfig, OutlierConfig
from fedproxy.model import Endpoint

A = Endpoint("east-1", "10.0.0.1", 8080)
B = Endpoint("east-1", "10.0.0.2", 8080)


def fail(det: OutlierDetector, ep: Endpoint, now: float, times: int) -> list[bool]:
    return [det.failure(ep, now) for _ in range(times)]


def test_five_consecutive_failures_eject_and_a_success_resets():
    det = OutlierDetector(OutlierConfig(), seed=1)
    assert fail(det, A, 0.0, 4) == [False] * 4
    det.success(A, 0.0)
    assert fail(det, A, 1.0, 4) == [False] * 4
    assert det.failure(A, 1.0) is True
    assert det.view(1.0).unhealthy == {A}
    assert det.failure(A, 2.0) is False  # already ejected


def test_ejection_time_grows_with_consecutive_ejections_and_is_capped():
    cfg = OutlierConfig(base_ejection_time=30.0, max_ejection_time=300.0)
    det = OutlierDetector(cfg, seed=2)
    now = 0.0
    for k in range(1, 13):
        assert fail(det, A, now, 5)[-1] is True
        until = det.next_change(now)
        expected = min(300.0, 30.0 * k)
        assert expected <= until - now <= expected * (1 + JITTER_FRACTION)
        assert A in det.view(until - 0.001).unhealthy
        view = det.view(until)
        assert A not in view.unhealthy and view.since[A] == until  # readmitted: slow start from then
        now = until  # fails again immediately: the multiplier keeps growing
    assert det.state(now) == []


def test_multiplier_decays_while_healthy():
    det = OutlierDetector(OutlierConfig(base_ejection_time=30.0), seed=3)
    fail(det, A, 0.0, 5)
    back = det.next_change(0.0)
    fail(det, A, back, 5)
    assert det.state(back)[0]["ejections"] == 2
    back2 = det.next_change(back)
    fail(det, A, back2 + 65.0, 5)  # two base periods healthy: 2 - 2 + 1
    assert det.state(back2 + 65.0)[0]["ejections"] == 1


def test_jitter_is_deterministic_under_a_seed_and_state_is_json():
    a, b = OutlierDetector(OutlierConfig(), seed=9), OutlierDetector(OutlierConfig(), seed=9)
    fail(a, A, 5.0, 5)
    fail(b, A, 5.0, 5)
    assert a.next_change(5.0) == b.next_change(5.0)
    assert a.state(5.0) == [{"endpoint": str(A), "cluster": "east-1", "until": a.next_change(5.0), "ejections": 1}]
    assert a.next_change(1000.0) is None
    a.retain([B])
    assert a.view(5.0).unhealthy == frozenset()


def test_active_health_rise_and_fall():
    h = ActiveHealth(rise=2, fall=3)
    assert [h.record(A, False) for _ in range(3)] == [False, False, True]
    assert h.down() == {A}
    assert h.record(A, True) is False and h.changing(A)
    assert h.record(A, False) is False  # streak broken
    assert [h.record(A, True) for _ in range(2)] == [False, True]
    assert h.down() == frozenset() and not h.changing(A)


def test_arrivals_ramp_only_after_the_baseline():
    arr = Arrivals()
    arr.observe([A], 0.0, 30.0)
    assert arr.view().since == {}
    arr.observe([A, B], 10.0, 30.0)
    assert arr.view().since == {B: 10.0}
    arr.observe([A, B], 40.0, 30.0)
    assert arr.view().since == {}
    arr.observe([A], 41.0, 30.0)
    arr.observe([A, B], 42.0, 30.0)  # came back: ramps again
    assert arr.view().since == {B: 42.0}
    merged = arr.view().union(OutlierDetector(OutlierConfig()).view(42.0))
    assert merged.since == {B: 42.0}


def test_circuit_breaker_counts_and_refuses_with_a_reason():
    br = CircuitBreaker(Limits.from_config(BalancingConfig(max_retries=2)))
    assert br.try_acquire("retries") is None and br.try_acquire("retries") is None
    assert "retries" in br.try_acquire("retries")
    br.release("retries")
    assert br.try_acquire("retries") is None
    assert br.state()["retries"] == {"active": 2, "max": 2, "refused": 1}
    assert Limits() == Limits(1024, 1024, 1024, 3, 20.0, 3)


def test_retry_budget_is_twenty_percent_with_a_floor_of_three():
    budget = RetryBudget.from_limits(Limits())
    assert budget.can_retry(0, 0, 2) and not budget.can_retry(0, 0, 3)
    assert budget.can_retry(90, 10, 19) and not budget.can_retry(90, 10, 20)
