from __future__ import annotations

from django.urls import path

from django_portal import views

# The /_2fa/ endpoints need no entry: the middleware answers them itself.
urlpatterns = [
    path("", views.home),
    path("login", views.login),
    path("logout", views.logout),
    path("api/me", views.me),
    path("health", views.health),
]
