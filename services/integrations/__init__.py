"""Clients of a running Ragyard for other frameworks: LangChain (`services.integrations.langchain`) and, in
docs/integrations.md, LlamaIndex through its OpenAI-compatible LLM."""
