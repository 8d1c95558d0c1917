"""Built-in alerts for teams without Prometheus: pure evaluation with hysteresis.

The worker's monitor (appliance/worker/monitor.py) observes the critical conditions
every MONITOR_INTERVAL_S and feeds them to an ``Evaluator``; each transition it returns
becomes a ``system.alert`` event (raised or resolved) and a row of ``system_alerts``.

No flapping, two ways:
- thresholds have a band: a value inside it (``Observation.firing is None``) keeps
  whatever the alert is (disk: raise under 10 % free, resolve only above 12 %);
- time holds: the bad condition must hold ``raise_after_s`` before raising, the good
  one ``clear_after_s`` before resolving; any contrary observation restarts the hold.

runbook/alerts.md, section "Built-in alerts", lists the rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Severity = Literal["critical", "warning"]

ACCOUNT_LOGGED_OUT = "account_logged_out"
ACCOUNT_DISCONNECTED = "account_disconnected"
WEBHOOK_DEAD_LETTERS = "webhook_dead_letters"
DISK_SPACE_LOW = "disk_space_low"

DISK_RAISE_BELOW = 0.10
DISK_CLEAR_ABOVE = 0.12


@dataclass(frozen=True)
class Rule:
    name: str
    severity: Severity
    summary: str
    raise_after_s: float
    clear_after_s: float


@dataclass(frozen=True)
class Observation:
    """One subject (``key``: an account id, or "" for the appliance) of one rule.

    ``firing``: True = the bad condition holds, False = the good one holds, None =
    inside the hysteresis band (keeps the current state, restarts no hold)."""

    rule: str
    key: str
    firing: bool | None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Active:
    """A raised alert (what the ``system_alerts`` table keeps of it)."""

    rule: str
    key: str
    raised_at: float
    details: Mapping[str, Any] = field(default_factory=dict)
    alert_id: int | None = None


@dataclass(frozen=True)
class Transition:
    state: Literal["raised", "resolved"]
    rule: Rule
    key: str
    at: float
    raised_at: float
    details: Mapping[str, Any]
    alert_id: int | None = None


def default_rules(*, disconnected_after_s: float, clear_after_s: float) -> dict[str, Rule]:
    rules = [
        Rule(
            ACCOUNT_LOGGED_OUT,
            "critical",
            "WhatsApp logged the account out: link the phone again",
            raise_after_s=0.0,
            clear_after_s=clear_after_s,
        ),
        Rule(
            ACCOUNT_DISCONNECTED,
            "critical",
            "the account should be connected but has not been for a while",
            raise_after_s=disconnected_after_s,
            clear_after_s=clear_after_s,
        ),
        Rule(
            WEBHOOK_DEAD_LETTERS,
            "warning",
            "webhook deliveries were given up on (dead letters) in the last hour",
            raise_after_s=0.0,
            clear_after_s=clear_after_s,
        ),
        Rule(
            DISK_SPACE_LOW,
            "critical",
            "less than 10 % free on the data directory's filesystem",
            raise_after_s=clear_after_s,
            clear_after_s=clear_after_s,
        ),
    ]
    return {rule.name: rule for rule in rules}


# -- observations from raw values (the thresholds with their bands) ---------------------


def account_observations(account_id: str, state: str, desired: str) -> list[Observation]:
    """Logged out by WhatsApp (not on request), and not connected while it should be."""
    details = {"account_id": account_id, "state": state, "desired": desired}
    wanted = desired == "connected"
    return [
        Observation(ACCOUNT_LOGGED_OUT, account_id, wanted and state == "logged_out", details),
        Observation(
            ACCOUNT_DISCONNECTED,
            account_id,
            wanted and state not in ("connected", "logged_out"),
            details,
        ),
    ]


def dead_letter_observation(dead_last_hour: int) -> Observation:
    return Observation(
        WEBHOOK_DEAD_LETTERS, "", dead_last_hour > 0, {"dead_last_hour": dead_last_hour}
    )


def disk_observation(free_bytes: int, size_bytes: int) -> Observation:
    ratio = free_bytes / size_bytes if size_bytes > 0 else 1.0
    firing: bool | None
    if ratio < DISK_RAISE_BELOW:
        firing = True
    elif ratio > DISK_CLEAR_ABOVE:
        firing = False
    else:
        firing = None
    details = {"free_bytes": free_bytes, "size_bytes": size_bytes, "free_ratio": round(ratio, 4)}
    return Observation(DISK_SPACE_LOW, "", firing, details)


# -- the evaluator -------------------------------------------------------------------------


class Evaluator:
    """State per (rule, key): raised or not, and since when the contrary condition holds."""

    def __init__(self, rules: Mapping[str, Rule], active: Iterable[Active] = ()) -> None:
        self.rules = dict(rules)
        self.active: dict[tuple[str, str], Active] = {(a.rule, a.key): a for a in active}
        self._since: dict[tuple[str, str], float] = {}  # contrary condition holds since

    def snapshot(self) -> tuple[dict[tuple[str, str], Active], dict[tuple[str, str], float]]:
        """The state, for ``restore`` when the caller could not record the transitions."""
        active = {
            k: Active(a.rule, a.key, a.raised_at, a.details, a.alert_id)
            for k, a in self.active.items()
        }
        return active, dict(self._since)

    def restore(
        self, state: tuple[dict[tuple[str, str], Active], dict[tuple[str, str], float]]
    ) -> None:
        self.active, self._since = dict(state[0]), dict(state[1])

    def evaluate(self, now: float, observations: Iterable[Observation]) -> list[Transition]:
        """Feed one round of observations; raised alerts whose subject was not observed
        (an account deleted, say) count as observed good."""
        seen: dict[tuple[str, str], Observation] = {}
        for obs in observations:
            if obs.rule in self.rules:
                seen[(obs.rule, obs.key)] = obs
        for key in list(self.active):
            if key not in seen:
                seen[key] = Observation(key[0], key[1], False, self.active[key].details)
        transitions: list[Transition] = []
        for key, obs in seen.items():
            transition = self._step(now, key, obs)
            if transition is not None:
                transitions.append(transition)
        # Forget holds of subjects that went away.
        for key in list(self._since):
            if key not in seen:
                del self._since[key]
        return transitions

    def _step(self, now: float, key: tuple[str, str], obs: Observation) -> Transition | None:
        rule = self.rules[obs.rule]
        active = self.active.get(key)
        if obs.firing is None:
            return None  # inside the band: keep state and holds
        contrary = obs.firing if active is None else not obs.firing
        if not contrary:
            self._since.pop(key, None)
            return None
        since = self._since.setdefault(key, now)
        if active is None:
            if now - since < rule.raise_after_s:
                return None
            del self._since[key]
            self.active[key] = Active(obs.rule, obs.key, now, dict(obs.details))
            return Transition("raised", rule, obs.key, now, now, dict(obs.details))
        if now - since < rule.clear_after_s:
            return None
        del self._since[key]
        del self.active[key]
        return Transition(
            "resolved", rule, obs.key, now, active.raised_at, dict(obs.details), active.alert_id
        )
