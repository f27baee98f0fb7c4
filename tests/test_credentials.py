import pytest

from proxy.auth.credentials import extract_credential
from proxy.errors import ApiError


def test_private_token_header():
    c = extract_credential({"PRIVATE-TOKEN": "glpat-abc"}, {})
    assert (c.scheme, c.token) == ("private", "glpat-abc")
    assert c.gitlab_headers() == {"PRIVATE-TOKEN": "glpat-abc"}


def test_bearer_header():
    c = extract_credential({"Authorization": "Bearer oauth-xyz"}, {})
    assert c.gitlab_headers() == {"Authorization": "Bearer oauth-xyz"}


@pytest.mark.parametrize(("param", "header"), [("private_token", "PRIVATE-TOKEN"), ("access_token", "Authorization")])
def test_query_parameters_become_headers(param, header):
    c = extract_credential({}, {param: "tok-123"})
    assert header in c.gitlab_headers()
    assert "tok-123" in c.gitlab_headers()[header]


def test_key_is_a_hash_never_the_token():
    c = extract_credential({"PRIVATE-TOKEN": "glpat-secret"}, {})
    assert "glpat-secret" not in c.key and "glpat-secret" not in repr(c)
    assert len(c.caller_key) == 64 and c.key.endswith(c.caller_key)
    assert c.key != extract_credential({"Authorization": "Bearer glpat-secret"}, {}).key


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        ({}, {}),
        ({"JOB-TOKEN": "abc"}, {}),
        ({"PRIVATE-TOKEN": "x", "JOB-TOKEN": "abc"}, {}),
        ({}, {"job_token": "abc"}),
        ({"PRIVATE-TOKEN": "glcbt-64_abc"}, {}),
        ({"PRIVATE-TOKEN": "gldt-deploytoken"}, {}),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, {}),
        ({"Authorization": "Bearer "}, {}),
        ({"PRIVATE-TOKEN": "has space"}, {}),
        ({"PRIVATE-TOKEN": "x" * 2000}, {}),
    ],
)
def test_refused_or_missing(headers, query):
    with pytest.raises(ApiError) as info:
        extract_credential(headers, query)
    assert info.value.status == 401
    assert info.value.body == {"message": "401 Unauthorized"}
