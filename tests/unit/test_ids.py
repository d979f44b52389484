from __future__ import annotations

import time

import pytest

from kiln_common.errors import InvalidArgument
from kiln_common.ids import ID_RE, check_id, new_id


def test_ids_are_valid_and_sort_by_time() -> None:
    first = new_id()
    time.sleep(0.002)
    second = new_id()
    assert ID_RE.match(first) and ID_RE.match(second)
    assert first < second


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "../../etc/passwd",
        "01m81xd1f8vz217x3gpcw23fy/",
        "01M81XD1F8VZ217X3GPCW23FYB",
        "a" * 27,
        "01m81xd1f8vz217x3gpcw23fyb\n",  # "$" would let the newline through
    ],
)
def test_anything_but_an_id_is_rejected(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="not a valid Kiln id"):
        check_id(bad)
