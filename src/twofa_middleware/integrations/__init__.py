"""Framework integrations (Flask, FastAPI, Django) over the ASGI and WSGI adapters."""
