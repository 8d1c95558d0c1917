"""The benchmarks' verdicts (``--check``) test issue 18's goals as worded."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def fanout() -> ModuleType:
    sys.path.insert(0, str(BENCH))  # the bench scripts import their siblings
    try:
        return importlib.import_module("webhook_fanout")
    finally:
        sys.path.remove(str(BENCH))


def figures(**changes: Any) -> dict[str, Any]:
    base = {
        "kept_up": False,
        "deliveries_per_s": 1124.0,
        "baseline_posts_per_s": 750.0,
        "latency_ms_p95": 30_000.0,
    }
    return {**base, **changes}


def test_a_slow_baseline_asks_only_the_ratio(fanout: ModuleType) -> None:
    verdict = fanout.judge(figures(), 3000.0)
    assert verdict["goal_ratio"] == pytest.approx(1.499, abs=0.001)
    assert verdict["goal_ratio_met"] and not verdict["goal_rate_applies"]
    assert verdict["goal_met"]


def test_under_the_ratio_fails(fanout: ModuleType) -> None:
    verdict = fanout.judge(figures(deliveries_per_s=590.0), 3000.0)
    assert verdict["goal_ratio"] == pytest.approx(0.787, abs=0.001)
    assert not verdict["goal_ratio_met"] and not verdict["goal_met"]


def test_a_fast_baseline_also_asks_3000_per_s_kept_up_at_p95_250ms(fanout: ModuleType) -> None:
    fast = figures(baseline_posts_per_s=4200.0, deliveries_per_s=3400.0)
    assert not fanout.judge(fast, 3000.0)["goal_met"]  # did not keep up
    kept = {**fast, "kept_up": True, "deliveries_per_s": 2990.0, "latency_ms_p95": 240.0}
    verdict = fanout.judge(kept, 3000.0)
    # Kept up: it delivered what came, so its capacity counts as at least the offered rate.
    assert verdict["goal_ratio"] == pytest.approx(3000 / 4200, abs=0.001)
    assert not verdict["goal_ratio_met"]  # 0.714x: 3,000/s is not 0.8x of 4,200/s
    assert verdict["goal_rate_applies"] and verdict["goal_rate_met"]
    assert not verdict["goal_met"]
    slow_p95 = fanout.judge({**kept, "latency_ms_p95": 260.0}, 3000.0)
    assert not slow_p95["goal_rate_met"] and not slow_p95["goal_met"]
    assert fanout.judge({**kept, "baseline_posts_per_s": 3700.0}, 3000.0)["goal_met"] is True
    smaller_offer = fanout.judge({**kept, "baseline_posts_per_s": 4000.0}, 1500.0)
    assert not smaller_offer["goal_rate_met"]  # 1,500/s offered is not 3,000/s sustained
