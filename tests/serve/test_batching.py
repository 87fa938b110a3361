"""Micro-batching in the service's decider: busy clients are decided together, a lone client never waits."""

from __future__ import annotations

import time

import pytest

from engine.data.io import read_table


@pytest.fixture(scope="module")
def decider_parts(trained, tmp_path_factory):
    from engine.feedback.store import open_store
    from engine.serve.decider import Recorder
    from engine.serve.ledger import Ledger
    from engine.serve.state import ServingState

    settings = trained.settings()
    state = ServingState(settings, model="champion", policy_dir="policies", learned=False, poll_seconds=60)
    state.load()
    url = f"sqlite:///{tmp_path_factory.mktemp('batching') / 'store.db'}"
    ledger = Ledger(open_store(settings, url=url), settings.arbitration.budget,
                    {ch: c.daily_capacity for ch, c in settings.channels.items()})
    recorder = Recorder(settings, ledger, flush_seconds=0.1, store_url=url)
    yield state, ledger, recorder
    recorder.close()


@pytest.fixture()
def records(month_files):
    rows = read_table(month_files["same"]).drop(columns=["churn", "churn_reason"])
    return [{k: (None if v != v else v) for k, v in r.items()} for r in rows.iloc[:60].to_dict("records")]


def test_clients_that_come_back_are_decided_together_and_a_lone_one_does_not_wait(decider_parts, records):
    from engine.serve.decider import PEAK_SECONDS, Decider

    state, ledger, recorder = decider_parts
    calls: list[int] = []
    decider = Decider(state, ledger, recorder, batch_wait_seconds=0.5,
                      on_batch=lambda n, _statuses, _seconds: calls.append(n))

    def answered(futures: list) -> None:
        for f in futures:
            assert len(f.result(timeout=60)) == 1
        deadline = time.monotonic() + 10
        while sum(calls) < done + len(futures) and time.monotonic() < deadline:  # on_batch runs after the answers
            time.sleep(0.01)

    try:
        done = 0
        answered([decider.submit([r]) for r in records[:8]])  # eight clients busy at once
        calls.clear()
        # three of them come back at once, the other five a moment later: one call for the eight
        first = [decider.submit([r]) for r in records[8:11]]
        time.sleep(0.1)
        answered(first + [decider.submit([r]) for r in records[11:16]])
        assert calls == [8], "the three were decided without waiting for the five"

        time.sleep(PEAK_SECONDS + 0.2)  # the busy spell is over: one client alone
        done = sum(calls)
        began = time.perf_counter()
        answered([decider.submit([records[20]])])
        assert calls[-1] == 1
        assert time.perf_counter() - began < 0.45, "a lone request waited for others that were not coming"
    finally:
        decider.close()
