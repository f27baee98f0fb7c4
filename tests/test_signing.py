import jwt

from proxy.cube.signing import Signer, security_claims, sign_security_context
from proxy.cube.tenants import Tenant

KEY = "s" * 32
TENANT = Tenant(7, "gitlab_project_7", "http://cube", KEY)


def test_claims_are_exactly_the_specs():
    token = sign_security_context(TENANT, "gitlab.example.com", 1_000, 180, None)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    claims = jwt.decode(token, KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})
    assert claims == {
        "iat": 1_000,
        "exp": 1_180,
        "appId": "gitlab_project_7",
        "iss": "gitlab.example.com",
        "gitlabToken": None,
    }


def test_minted_token_in_claim():
    assert security_claims(TENANT, "h", 5, 10, "glpat-minted")["gitlabToken"] == "glpat-minted"


def test_reuse_within_a_second_only():
    signer = Signer("h", 180)
    first = signer.sign(TENANT, 100)
    assert signer.sign(TENANT, 100) is first
    later = signer.sign(TENANT, 101)
    assert later != first
    assert (
        jwt.decode(later, KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False})["iat"] == 101
    )
    other = Tenant(8, "gitlab_project_8", "http://cube", KEY)
    assert (
        jwt.decode(
            signer.sign(other, 101), KEY, algorithms=["HS256"], options={"verify_exp": False, "verify_iat": False}
        )["appId"]
        == "gitlab_project_8"
    )


def test_minted_tokens_are_never_reused():
    signer = Signer("h", 180)
    a = signer.sign(TENANT, 100, "tok-a")
    b = signer.sign(TENANT, 100, "tok-b")
    assert a != b
    assert signer.sign(TENANT, 100) not in {a, b}
