"""Exploration with logged propensities: a small share of decisions chosen at random, and for every decision
the probability with which its action was chosen.

Why: off-policy evaluation (engine/uplift/ope.py) can only credit a new policy with what the logged one
sometimes did. A policy that always sends the same offer to the same subscriber never shows what another
offer (or none) would have done; an epsilon-greedy share of random choices does, at a known cost.

**Rule.** Per subscriber, with probability `epsilon` the action is drawn uniformly among the m eligible
actions: no contact plus each eligible (offer, channel) candidate; otherwise it is the arbitration's choice
(`greedy`, possibly no contact). So an action's probability is

    P(a) = (1 - epsilon) x [a is the greedy action] + epsilon / m

and every decision, explored or not, records P(chosen action): its propensity.

**Stable.** Both draws (explore or not; which action) are uniforms computed from a hash of (seed, key),
key being the subscriber id, not from a random stream: a subscriber gets the same draw alone or in any batch,
partition or order, and a run repeated with the same seed explores the same subscribers. Use a new seed
per run (e.g. the run id) so that the explored subscribers change from month to month.

**Control group.** Held back after this step, among subscribers whose action is a contact (as today):
`with_control` gives the final action's propensity, P(no contact) = P_e(none) + share x (1 - P_e(none)) and
P(contact a) = (1 - share) x P_e(a).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

NO_CONTACT = -1
DEFAULT_EPSILON = 0.05
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 (wrapping arithmetic)."""
    x = x.astype(np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= _M1
        x ^= x >> np.uint64(27)
        x *= _M2
        x ^= x >> np.uint64(31)
    return x


@functools.lru_cache(maxsize=64)
def _seed_hash(seed: str) -> np.uint64:
    return pd.util.hash_array(np.array([seed], dtype=object))[0]


def stable_uniforms(keys: np.ndarray, seed: int | str, streams: int = 2) -> np.ndarray:
    """(streams, n) uniforms in [0, 1) from a hash of each key and the seed: same key + seed, same numbers."""
    keys = np.asarray(keys)
    if keys.dtype.kind in "iu":
        h = keys.astype(np.uint64)
    else:
        h = pd.util.hash_array(keys.astype(str).astype(object), categorize=False)
    seed_h = _seed_hash(str(seed))
    out = np.empty((streams, len(h)))
    for s in range(streams):
        with np.errstate(over="ignore"):
            z = _mix(h ^ _mix(np.array([seed_h + np.uint64(s + 1)], dtype=np.uint64)))
        out[s] = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


def explored_mask(keys: np.ndarray, epsilon: float = DEFAULT_EPSILON, seed: int | str = 0) -> np.ndarray:
    """Which subscribers `explore` explores (the same draw), known before allocation: an allocation can take
    the explored subscribers' random actions off the budget first, then allocate the rest."""
    return stable_uniforms(np.asarray(keys), seed)[0] < epsilon


@dataclass
class Exploration:
    """Per subscriber: the action (candidate index, or NO_CONTACT), its propensity, whether it was explored,
    the number of eligible actions m (no contact included) and P(no contact) under the rule."""

    action: np.ndarray
    propensity: np.ndarray
    explored: np.ndarray
    n_actions: np.ndarray
    p_no_contact: np.ndarray


def explore(row: np.ndarray, n_rows: int, greedy: np.ndarray, keys: np.ndarray, *,
            epsilon: float = DEFAULT_EPSILON, seed: int | str = 0) -> Exploration:
    """Epsilon-greedy choice per subscriber (see the module docs).

    `row`: per eligible candidate (one per distinct offer and channel), its subscriber's position
    (0..n_rows-1). `greedy`: per subscriber the arbitration's choice, an index into the candidates or
    NO_CONTACT. `keys`: per subscriber the stable key (subscriber_id).
    """
    if not 0 <= epsilon <= 1:
        raise ValueError("epsilon must be in [0, 1]")
    row = np.asarray(row, dtype=np.int64)
    greedy = np.asarray(greedy, dtype=np.int64)
    if len(greedy) != n_rows or len(keys) != n_rows:
        raise ValueError("greedy and keys need one entry per subscriber")
    counts = np.bincount(row, minlength=n_rows)
    m = counts + 1
    order = np.argsort(row, kind="stable")
    starts = np.cumsum(counts) - counts
    u = stable_uniforms(np.asarray(keys), seed)
    explored = u[0] < epsilon
    pick = np.minimum((u[1] * m).astype(np.int64), m - 1)  # 0: no contact, j: the row's j-th candidate
    random_action = np.where(pick == 0, NO_CONTACT, order[np.minimum(starts + pick - 1, max(len(order) - 1, 0))]
                             if len(order) else NO_CONTACT)
    action = np.where(explored, random_action, greedy)
    propensity = (1 - epsilon) * (action == greedy) + epsilon / m
    p_none = (1 - epsilon) * (greedy == NO_CONTACT) + epsilon / m
    return Exploration(action=action, propensity=propensity, explored=explored, n_actions=m, p_no_contact=p_none)


def action_probabilities(row: np.ndarray, n_rows: int, greedy: np.ndarray, epsilon: float = DEFAULT_EPSILON
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(P(candidate) per candidate, P(no contact) per subscriber) under the rule: the full logging policy."""
    row = np.asarray(row, dtype=np.int64)
    m = np.bincount(row, minlength=n_rows) + 1
    idx = np.arange(len(row))
    p_cand = (1 - epsilon) * (greedy[row] == idx) + epsilon / m[row]
    p_none = (1 - epsilon) * (greedy == NO_CONTACT) + epsilon / m
    return p_cand, p_none


def with_control(exploration: Exploration, control: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    """(final action, its propensity) once the control group (`control`, a mask over subscribers whose
    action is a contact, drawn with probability `share`) is held back: see the module docs."""
    control = np.asarray(control, dtype=bool) & (exploration.action != NO_CONTACT)
    action = np.where(control, NO_CONTACT, exploration.action)
    p_none = exploration.p_no_contact + share * (1 - exploration.p_no_contact)
    propensity = np.where(action == NO_CONTACT, p_none, (1 - share) * exploration.propensity)
    return action, propensity
