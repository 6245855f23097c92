"""Senders that deliver one-time codes: SMTP email, SMS webhook, and console (development).

Every sender has one method, ``async send(message: CodeMessage) -> None``, and
raises ``DeliveryError`` (generic message, cause chained) on any failure.
"""

from __future__ import annotations

from .email import ConsoleEmailSender, EmailSender, SmtpEmailSender
from .message import CodeMessage, render_html, render_sms, render_subject, render_text
from .sms import ConsoleSmsSender, GatewayStatusError, SmsSender, WebhookSmsSender

__all__ = [
    "CodeMessage",
    "ConsoleEmailSender",
    "ConsoleSmsSender",
    "EmailSender",
    "GatewayStatusError",
    "SmsSender",
    "SmtpEmailSender",
    "WebhookSmsSender",
    "render_html",
    "render_sms",
    "render_subject",
    "render_text",
]
