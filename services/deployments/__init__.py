"""The Ray Serve side: the plain classes each deployment wraps (gateway, retriever, router, worker),
the clients the pipeline reaches them through (in-process or by DeploymentHandle), the application
graph, and starting a local Ray on loopback."""
