"""The fuzz runs over the real services, as the integration tests do."""

from tests.integration.conftest import services  # noqa: F401
