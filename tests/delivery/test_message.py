"""The code message: its fields are checked once, and its wording carries only what it must."""

from __future__ import annotations

import pytest

from twofa_middleware.delivery import (
    CodeMessage,
    render_html,
    render_sms,
    render_subject,
    render_text,
)
from twofa_middleware.delivery.message import is_loopback_host, render_console


def make(**overrides: object) -> CodeMessage:
    fields: dict[str, object] = {
        "code": "042917",
        "portal_name": "Acme",
        "purpose": "sign-in",
        "expires_in_minutes": 5,
        "to": "alice@example.com",
    }
    fields.update(overrides)
    return CodeMessage(**fields)  # type: ignore[arg-type]


def test_subject_names_purpose_and_portal_but_not_the_code() -> None:
    message = make()
    assert render_subject(message) == "Your sign-in code for Acme"
    assert "042917" not in render_subject(message)


def test_text_body_holds_code_portal_purpose_and_expiry() -> None:
    text = render_text(make())
    assert "    042917\n" in text  # the code on its own line, leading zero kept
    assert "Your sign-in code for Acme is:" in text
    assert "It expires in 5 minutes" in text


def test_expiry_wording_is_singular_for_one_minute() -> None:
    assert "expires in 1 minute and" in render_text(make(expires_in_minutes=1))
    assert "Expires in 1 minute." in render_sms(make(expires_in_minutes=1))


def test_html_body_holds_the_same_fields() -> None:
    body = render_html(make())
    assert "<strong>042917</strong>" in body
    assert "Your sign-in code for Acme is:" in body
    assert "It expires in 5 minutes" in body


def test_html_body_escapes_portal_name_and_purpose() -> None:
    body = render_html(make(portal_name='<script>alert("x")</script> & Co', purpose="<b>"))
    assert "<script>" not in body
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in body
    assert "<b>" not in body and "&lt;b&gt;" in body


def test_sms_body_is_short_and_names_portal_first() -> None:
    sms = render_sms(make())
    assert sms == "Acme sign-in code: 042917. Expires in 5 minutes. Do not share it."
    assert len(sms) <= 160  # one GSM-7 segment


def test_bodies_carry_no_recipient_address() -> None:
    # Item 89: nothing sensitive besides the code, portal, purpose and expiry.
    message = make()
    for body in (render_subject(message), render_text(message), render_html(message)):
        assert "alice@example.com" not in body
    assert "alice@example.com" not in render_sms(message)


def test_repr_hides_the_code() -> None:
    text = repr(make())
    assert "042917" not in text
    assert "code='***'" in text


def test_console_line_shows_code_and_destination() -> None:
    line = render_console(make(), "email")
    assert line.startswith("[twofa dev] code for alice@example.com: 042917 ")
    assert "\n" not in line


@pytest.mark.parametrize(
    "field",
    ["to", "portal_name", "purpose", "code"],
)
@pytest.mark.parametrize(
    "bad",
    ["x\r\nBcc: evil@example.net", "x\n", "x\r", "x\x00", "x\u2028y", "x\x85y", "x\ty"],
)
def test_line_breaks_and_control_characters_are_refused(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match=f"CodeMessage.{field} must"):
        make(**{field: bad})


@pytest.mark.parametrize("field", ["to", "portal_name", "purpose", "code"])
@pytest.mark.parametrize("bad", ["", "   ", None, 123456])
def test_empty_or_non_string_fields_are_refused(field: str, bad: object) -> None:
    with pytest.raises(ValueError, match=f"^CodeMessage.{field} must be a non-empty string$"):
        make(**{field: bad})


@pytest.mark.parametrize("code", ["12 34", "١٢٣٤٥٦", "12-34", "$2b$hash"])
def test_code_must_be_ascii_letters_and_digits(code: str) -> None:
    with pytest.raises(ValueError, match=r"^CodeMessage.code must be ASCII letters and digits$"):
        make(code=code)


@pytest.mark.parametrize("minutes", [0, -1, True, 2.5, "5"])
def test_expiry_must_be_a_positive_integer(minutes: object) -> None:
    with pytest.raises(
        ValueError, match=r"^CodeMessage.expires_in_minutes must be a positive integer$"
    ):
        make(expires_in_minutes=minutes)


def test_message_is_frozen() -> None:
    message = make()
    with pytest.raises(AttributeError):
        message.to = "mallory@example.net"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost.example.com", False),
        ("10.0.0.1", False),
        ("mail.example.com", False),
        ("", False),
    ],
)
def test_is_loopback_host(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
