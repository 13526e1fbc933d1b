"""studies.fingerprint: the same code gives the same fingerprint, and --compare says so."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # every policy on two small twins and the real file: a few minutes
def test_fingerprint_is_reproducible_and_compare_finds_a_difference(tmp_path, capsys):
    from studies import fingerprint

    out = tmp_path / "a.json"
    assert fingerprint.main(["--grid", "8", "--out", str(out)]) == 0
    assert fingerprint.main(["--grid", "8", "--compare", str(out)]) == 0
    stored = json.loads(out.read_text())
    first = next(iter(stored))
    stored[first]["auc"] += 0.1
    out.write_text(json.dumps(stored))
    assert fingerprint.main(["--grid", "8", "--compare", str(out)]) == 1
    assert f"differs: {first}" in capsys.readouterr().out
