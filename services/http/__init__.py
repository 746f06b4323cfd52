"""The HTTP edge, one module per concern: errors (the exception → OpenAI error table and the handlers),
middleware (body limit, API keys, request metrics), deps (the service and a request's SLA context),
sse (the chat stream), and one APIRouter per group of routes (ops, openai, qa, documents).
`services.http.app.create_app` assembles them."""
