"""The encoders reproduce the official fp32 outputs of the golden fixture sets (rel <= 1e-4)."""

from __future__ import annotations

import pytest

from backend.scail2.testing.parity_encoders import check_clip_fixture, check_t5_fixture, check_vae_fixture

CHECKS = {"t5": check_t5_fixture, "clip": check_clip_fixture, "vae": check_vae_fixture}
EXPECTED_CASES = {
    "t5": {"output_full", "context_0", "context_1", "long_output_full", "long_context_0"},
    "clip": {"preprocessed", "output"},
    "vae": {"encode", "decode"},
}


@pytest.mark.parametrize("set_name", sorted(CHECKS))
def test_encoder_fixture_set_matches(parity_root, set_name):
    records = CHECKS[set_name](parity_root / set_name)
    assert {r["case"] for r in records} == EXPECTED_CASES[set_name]
    for record in records:
        assert record["set"] == set_name
        assert record["tol"] == 1e-4
        assert record["ok"], record
        assert record["max_rel_err"] <= 1e-5, record  # fp32 against fp32: far below the tolerance
