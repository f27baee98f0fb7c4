import pytest

from proxy.cube.error_map import error_text, is_continue_wait, map_cube_error


@pytest.mark.parametrize(
    "message",
    [
        "Code: 81. DB::Exception: Database gitlab_project_9 doesn't exist. (UNKNOWN_DATABASE)",
        "Code: 60. DB::Exception: Table gitlab_project_9.snowplow_events doesn't exist. (UNKNOWN_TABLE)",
        # older ClickHouse servers and drivers (Debian's 18.16 with driver 0.28.64) say it without the code
        "Error: Database gitlab_project_9 doesn't exist",
        "Error: Table gitlab_project_9.snowplow_events doesn't exist.",
        'Error: relation "gitlab_project_9.events" does not exist',
        'schema "gitlab_project_9" does not exist',
    ],
)
def test_missing_database_is_404(message):
    assert map_cube_error(message) == (404, {"message": "404 Clickhouse Database Not Found"})


def test_other_errors_are_400_with_message_and_error():
    assert map_cube_error("Cube not found for path 'Nope.count'") == (
        400,
        {"message": "Cube not found for path 'Nope.count'", "error": "Cube not found for path 'Nope.count'"},
    )


def test_error_text():
    assert error_text({"error": "x", "stack": "at /srv/cube/x.js"}) == "x"
    assert error_text({"error": {"code": 1}}) == "{'code': 1}"
    assert error_text({"error": None}) == "Cube answered an error without a message"
    assert error_text({"results": []}) is None
    assert error_text([1]) is None
    assert is_continue_wait({"error": "Continue wait"})
    assert not is_continue_wait({"error": "other"})


def test_a_body_nobody_reads_is_passed_on_unparsed_once_its_outline_is_json():
    from proxy.cube.client import classify_body
    from proxy.errors import ApiError

    body = b'{"results":[{"data":[{"TrackedEvents.count":"1"}]}]}'
    answer = classify_body(body, parse=False)
    assert (answer.status, answer.body, answer.parsed) == (200, body, None)
    assert classify_body(b" [1, 2] \n", parse=False).body == b" [1, 2] \n"
    # errors are still read and mapped, Continue wait still recognised, whatever the spacing
    assert classify_body(b' { "error" : "Cube not found for path \'X.y\'" }', parse=False).status == 400
    assert classify_body(b'{ "error": "Continue wait" }', parse=False).continue_wait
    # a body cut short, or not JSON at all, is still a 502
    for bad in (b'{"results":[{"data":[', b"<html>proxy error</html>", b""):
        with pytest.raises(ApiError, match="not valid JSON"):
            classify_body(bad, parse=False)


@pytest.mark.parametrize(
    "message",
    [
        "Error: Missing columns: 'nope' while processing query",
        "Error: Unknown identifier: doesn't exist in this table",
        "Cube not found for path 'Table.count'",
    ],
)
def test_other_clickhouse_errors_are_not_404(message):
    assert map_cube_error(message)[0] == 400
