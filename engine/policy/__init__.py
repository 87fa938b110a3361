"""Retention policies marketers write, test and simulate: load, validate, compile to durable-rules, decide.

    from engine.policy import load_policy_set, PolicyEngine
    ps = load_policy_set("policies")        # raises PolicyError with every problem as file:line
    engine = PolicyEngine(ps)               # one durable-rules ruleset, unique name per instance
    out = engine.decide(frame)              # offer_id, channel, rule_id, stage, priority, matched_rules, message, note

Modules: `conditions` (the condition language), `model` (file format, JSON Schema, loaded objects),
`loader` (YAML with line numbers, errors), `rules_engine` (the only module importing durable-rules),
`evaluate` (PolicyEngine and its semantics), `validate` (warnings), `testing` (YAML test cases),
`explain`, `simulate`, `match`.
"""

from engine.policy.evaluate import OUTPUT_COLUMNS, Evaluation, PolicyEngine
from engine.policy.loader import load_policy_set
from engine.policy.model import Action, Offer, PolicySet, Rule

__all__ = ["OUTPUT_COLUMNS", "Action", "Evaluation", "Offer", "PolicyEngine", "PolicySet", "Rule",
           "load_policy_set"]
