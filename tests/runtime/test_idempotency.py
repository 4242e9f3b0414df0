"""Idempotency keys: the same key with the same request returns the first execution; with a
different request it is refused, naming the earlier execution and what differs (never values).

The rules run on the in-process engine; a key checked against the log after the coordinator
actor restarts on Ray's own engine (and after an in-process engine reopens its state file).
"""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.errors import IdempotencyConflict, SubmissionError
from runtime.idempotency import differences, fingerprint
from tests.sop_builders import H, own_engine, sop_text, wait_for

NAMES = st.sampled_from(["a", "b", "c", "d"])
VALUES = st.one_of(st.integers(), st.text(max_size=8), st.booleans(), st.none())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(NAMES, VALUES), st.dictionaries(NAMES, VALUES), st.sets(NAMES), st.booleans())
def test_property_a_fingerprint_names_exactly_the_inputs_that_differ(first: dict, second: dict,
                                                                      secrets: set, same_sop: bool) -> None:
    """For any two requests: no difference iff same SOP and inputs; differences name inputs, never values."""
    definition = {"sop": "orders", "steps": [{"id": "x", "uses": "shell"}]}
    one = fingerprint("orders", "1", definition, "system_design", first, tuple(sorted(secrets)),
                      with_secrets=True)
    two = fingerprint("orders", "1" if same_sop else "2", definition, "system_design", second,
                      tuple(sorted(secrets)), with_secrets=True)
    found = differences(one, two)
    changed = {k for k in first.keys() | second.keys()
               if k not in first or k not in second or json.dumps(first[k]) != json.dumps(second[k])}
    assert (found == []) == (same_sop and not changed)
    for name in changed:
        assert any(f"'{name}'" in d for d in found), (name, found)
    # The words depend on which inputs differ, never on their values: any other values with the
    # same pattern of equality give the very same words.
    labels: dict[str, str] = {}

    def relabelled(inputs: dict) -> dict:
        return {k: labels.setdefault(json.dumps(v, sort_keys=True, separators=(",", ":")), f"other-{len(labels)}")
                for k, v in inputs.items()}

    assert differences(
        fingerprint("orders", "1", definition, "system_design", relabelled(first), tuple(sorted(secrets)),
                    with_secrets=True),
        fingerprint("orders", "1" if same_sop else "2", definition, "system_design", relabelled(second),
                    tuple(sorted(secrets)), with_secrets=True)) == found
    # The fingerprint kept in the log holds no secret input's value nor a hash of it.
    logged = fingerprint("orders", "1", definition, "system_design", first, tuple(sorted(secrets)))
    assert "secret_values" not in logged and not secrets & logged["inputs"].keys()


@pytest.fixture(scope="module")
def keyed(ray_cluster, tmp_path_factory):
    with own_engine("sopflow-idempotency-tests", tmp_path_factory.mktemp("idem")) as e:
        yield e


def _sop(sop_file, version: str = "1") -> str:
    return sop_file(sop_text(f"""\
        steps:
          - id: a
            uses: {H}:echo
            with: {{value: "${{{{ inputs.amount }}}}"}}
        """, name="pay", version=version,
        inputs="inputs:\n  amount: {type: integer, required: true}\n  token: {type: string, secret: true}\n"),
        name=f"pay{version}.yaml")


def test_a_reused_key_with_other_inputs_or_another_sop_is_refused(inproc, sop_file) -> None:
    key = f"pay-{uuid.uuid4().hex}"
    path = _sop(sop_file)
    first = inproc.submit(path, {"amount": 10, "token": "s3cr3t-one"}, idempotency_key=key)
    assert inproc.submit(path, {"amount": 10, "token": "s3cr3t-one"}, idempotency_key=key) == first
    with pytest.raises(IdempotencyConflict) as info:
        inproc.submit(path, {"amount": 11, "token": "s3cr3t-one"}, idempotency_key=key)
    err = info.value
    assert isinstance(err, SubmissionError) and err.execution_id == first and err.key == key
    assert first in str(err) and "'amount'" in str(err)
    assert "11" not in str(err).replace(key, "").replace(first, "")  # names the input, never its value
    with pytest.raises(IdempotencyConflict, match="'token'") as info:  # a secret: named, never shown
        inproc.submit(path, {"amount": 10, "token": "s3cr3t-two"}, idempotency_key=key)
    assert "s3cr3t" not in str(info.value)
    with pytest.raises(IdempotencyConflict, match="version 1 -> 2"):
        inproc.submit(_sop(sop_file, "2"), {"amount": 10, "token": "s3cr3t-one"}, idempotency_key=key)
    inproc.wait(first, timeout=60)


@pytest.mark.ray
def test_a_reused_key_is_checked_against_the_log_after_a_restart(keyed, sop_file) -> None:
    import ray

    key = f"pay-{uuid.uuid4().hex}"
    path = _sop(sop_file)
    first = keyed.submit(path, {"amount": 5}, idempotency_key=key)
    keyed.wait(first, timeout=60)
    ray.kill(keyed._conn.actors.coordinator, no_restart=False)  # the new one knows the key from the log only
    wait_for(lambda: keyed.submit(path, {"amount": 5}, idempotency_key=key) == first, timeout_s=90)
    with pytest.raises(IdempotencyConflict, match="'amount'") as info:
        keyed.submit(path, {"amount": 6}, idempotency_key=key)
    assert info.value.execution_id == first


def test_a_batch_with_a_conflicting_key_is_refused_whole(inproc, sop_file) -> None:
    path = _sop(sop_file)
    key = f"pay-{uuid.uuid4().hex}"
    first = inproc.submit(path, {"amount": 1}, idempotency_key=key)
    before = {v.id for v in inproc.list(sop="pay", limit=100_000)}
    fresh = f"pay-{uuid.uuid4().hex}"
    with pytest.raises(IdempotencyConflict, match=first):
        inproc.submit_many(path, [{"amount": 2}, {"amount": 3}], idempotency_keys=[fresh, key])
    with pytest.raises(IdempotencyConflict, match="'amount'"):  # the same key twice in one batch
        inproc.submit_many(path, [{"amount": 2}, {"amount": 3}], idempotency_keys=[fresh, fresh])
    assert {v.id for v in inproc.list(sop="pay", limit=100_000)} == before  # nothing was submitted
    assert inproc.submit_many(path, [{"amount": 1}], idempotency_keys=[key]) == [first]
    inproc.wait(first, timeout=60)


def test_a_reused_key_is_checked_against_the_log_after_an_in_process_engine_reopens_its_state(
        sop_file, tmp_path) -> None:
    from runtime import Engine

    key, state = f"pay-{uuid.uuid4().hex}", str(tmp_path / "state.db")
    path = _sop(sop_file)
    first_engine = Engine.in_process(state=state)
    try:
        first = first_engine.submit(path, {"amount": 5}, idempotency_key=key)
        first_engine.wait(first, timeout=60)
    finally:
        first_engine.shutdown()
    again = Engine.in_process(state=state)  # knows the key from the log only
    try:
        assert again.submit(path, {"amount": 5}, idempotency_key=key) == first
        with pytest.raises(IdempotencyConflict, match="'amount'") as info:
            again.submit(path, {"amount": 6}, idempotency_key=key)
        assert info.value.execution_id == first
    finally:
        again.shutdown()
