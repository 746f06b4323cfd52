"""The plain classes each Ray Serve deployment wraps (retriever, router, worker): usable in one process as they
are, and bound into the Serve graph by `services.serve.app`."""
