"""Spend on saves, not on acceptances: the incremental effect of offers and what follows from it.

- `effect`: tau(x, offer) = P(churn | no contact, x) - P(churn | offer, x), a T-learner on CatBoost shrunk
  toward prior effects per offer; `incremental_effect` for arbitration (priors when there is no model).
- `portable`: the uplift model's own code, registered as the MLflow pyfunc `models:/uplift@champion`.
- `registry`: load the registered uplift model (None when there is none).
- `data`: logged decisions + outcomes + the decided-on rows, from the decision store.
- `metrics`: Qini coefficient, AUUC, uplift@k.
- `explore`: epsilon-greedy exploration with stable draws and logged propensities.
- `ope`: off-policy evaluation (IPS, SNIPS, DR with bootstrap intervals, ESS, refusal on poor overlap).
- `evaluate`: `retain uplift evaluate`: a changed policy set judged on logged runs.
- `emp`: expected maximum profit of the churn model and the contact share it implies.

Nothing here imports engine.decision or engine.policy: the decision core calls in (incremental_effect,
explore), so the other direction would be an import cycle (tests/test_layout.py). The target policy of
`retain policy evaluate` is wired one level up, in engine.decision.run.policy_target.
"""
