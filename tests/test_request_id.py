import re

import pytest

from proxy.request_id import normalise_request_id

FRESH = re.compile(r"[0-9a-f-]{36}-span-1")


def test_kept_with_span():
    assert normalise_request_id("abc-123-span-7") == "abc-123-span-7"


def test_span_added():
    assert normalise_request_id("dashboard:42/x+y=.z_") == "dashboard:42/x+y=.z_-span-1"


@pytest.mark.parametrize("bad", [None, "", "a b", "x" * 129, "évil", "a\nb", "<script>"])
def test_replaced(bad):
    assert FRESH.fullmatch(normalise_request_id(bad))


def test_max_length_kept():
    assert normalise_request_id("x" * 128) == "x" * 128 + "-span-1"
