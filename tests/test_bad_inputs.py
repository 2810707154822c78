"""Every bad input of the catalogue (tests/bad_inputs.py) gets an error that names it and loses nothing."""

import re

import pytest
from bad_inputs import CASES


def test_the_catalogue_is_broad():
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)
    assert {c.area for c in CASES} >= {"config", "dataset", "model", "adapter", "run folder", "generation", "http"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_named_error(case, tmp_path):
    with pytest.raises(case.error) as e:
        case.run(tmp_path)
    assert re.search(case.names, str(e.value), re.S), str(e.value)
    if case.kept is not None:
        assert case.kept(tmp_path), "something computed before the error is gone"
