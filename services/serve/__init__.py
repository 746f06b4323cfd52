"""The Serve side: the application builder (deployments bound into one graph), the handles the pipeline calls
through, and a local Ray for `ragyard serve`."""
