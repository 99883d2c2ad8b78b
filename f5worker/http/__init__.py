"""``WORKER_MODE=http``: the worker as an HTTP server for RunPod's load-balancing endpoints.

OpenAI's ``/v1/audio/speech`` (and ``/v1/models``, voices) plus a native route taking a queue job's
input, ``/ping`` for the load balancer, and a playground page at ``/``; every synthesis goes through
the same :class:`f5worker.pipeline.Worker` and engine scheduler as the queue handler.
"""
