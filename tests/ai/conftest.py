import pytest

from allting.ai.gateway import GatewayConfig, ModelTarget, RetryPolicy
from allting.testing.stub_llm import StubLLM

PLANTED_KEY = "sk-planted-Zq8Xv3Lm0Pt7Rw2Ny5Kb"

FAST_RETRIES = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05, max_retry_after=1.0)


@pytest.fixture(scope="session")
def stub():
    with StubLLM() as server:
        yield server


@pytest.fixture(scope="session")
def fallback_stub():
    with StubLLM() as server:
        yield server


@pytest.fixture(autouse=True)
def _fresh_stubs(request):
    for name in ("stub", "fallback_stub"):
        if name in request.fixturenames:
            request.getfixturevalue(name).reset()


@pytest.fixture
def config():
    # The stub listens on loopback, which the outbound guard refuses unless listed.
    return GatewayConfig(retry=FAST_RETRIES, allowed_networks="127.0.0.1")


@pytest.fixture
def planted_key():
    return PLANTED_KEY


@pytest.fixture
def make_target():
    """Target for a model on a stub server, with the planted key (fixtures, not imports: the name
    `conftest` is shared with the root conftest, so importing from it is ambiguous)."""

    def make(server, model="stub-chat"):
        return ModelTarget(
            litellm_model=model, api_base=server.url, api_key=PLANTED_KEY, provider_type="openai_compatible"
        )

    return make


class Routing:
    """The routing a tenant may add to a target on a stub server: an organization, an extra header
    and extra body fields; `headers` are what every request to the provider must then carry."""

    headers = {
        "authorization": f"Bearer {PLANTED_KEY}",
        "x-tenant-route": "sv",
        "openai-organization": "org-kommun",
    }

    def target(self, server, model: str, extra_body: dict) -> ModelTarget:
        return ModelTarget(
            litellm_model=model,
            api_base=server.url,
            api_key=PLANTED_KEY,
            provider_type="openai_compatible",
            extra={
                "organization": "org-kommun",
                "extra_headers": {"x-tenant-route": "sv"},
                "extra_body": extra_body,
            },
        )


@pytest.fixture
def routing():
    return Routing()


@pytest.fixture
def target(stub, make_target):
    return make_target(stub)
