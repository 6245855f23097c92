"""The demo portal as a Django project, behind twofa-middleware's Django middleware.

ASGI:  uvicorn --app-dir examples django_portal.asgi:application
WSGI:  PYTHONPATH=examples waitress-serve --port 8000 django_portal.wsgi:application

The same contract and TWOFA_* variables as portal_app.py (see demo_users.py).
"""
