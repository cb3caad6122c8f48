"""The example project's settings, URLs, server entry points and its ApiTokens."""
