from tests.conftest import QUERY, REPORTER


async def test_load_round_trip(client, cube):
    resp = await client.post(
        "/api/v4/projects/1/product_analytics/request/load", json={"query": QUERY}, headers=REPORTER
    )
    body = await resp.json()
    assert resp.status == 200, body
    assert body["results"][0]["data"] == [{"TrackedEvents.count": "5"}]
    assert cube.calls[0].claims["appId"] == "gitlab_project_1"
