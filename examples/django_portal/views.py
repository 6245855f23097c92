from __future__ import annotations

from demo_users import (
    LOGIN_FAILED_PAGE,
    NOT_AUTHENTICATED,
    check_password,
    home_page,
    login_page,
    me_json,
    portal_for_host,
    reason_of,
)
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from django_portal.users import IDS


def _host(request: HttpRequest) -> str:
    return request.headers.get("host", "")


@require_http_methods(["GET", "POST"])
def login(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return HttpResponse(login_page(_host(request)))
    username = request.POST.get("username", "")
    if not check_password(username, request.POST.get("password", "")):
        return HttpResponse(LOGIN_FAILED_PAGE, status=401)
    # django.contrib.auth.login() would update last_login in a database; the demo
    # has none, so the session keys it sets are written here.
    request.session.flush()
    request.session[SESSION_KEY] = str(IDS[(portal_for_host(_host(request)), username)])
    request.session[BACKEND_SESSION_KEY] = "django_portal.users.DemoBackend"
    request.session[HASH_SESSION_KEY] = ""
    return _see_other("/")


@require_POST
def logout(request: HttpRequest) -> HttpResponse:
    request.session.flush()
    return _see_other("/login")


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return _see_other("/login")
    return HttpResponse(home_page(request.user, reason_of(getattr(request, "twofa", None))))


@require_GET
def me(request: HttpRequest) -> HttpResponse:
    if not request.user.is_authenticated:
        return JsonResponse(NOT_AUTHENTICATED, status=401)
    return JsonResponse(me_json(request.user, reason_of(getattr(request, "twofa", None))))


@require_GET
def health(_request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


def _see_other(location: str) -> HttpResponse:
    response = HttpResponse(status=303)
    response["Location"] = location
    return response
