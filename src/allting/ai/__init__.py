"""AI models and providers: the gateway to LiteLLM and the local embedding model."""
