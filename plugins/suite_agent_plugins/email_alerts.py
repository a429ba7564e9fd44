"""Mails service errors and fatal states through SMTP.

Options: `to` (required: an address or a list), `from` (default suite-agent@<host name>),
`smtp_host` (default localhost), `smtp_port` (default 25), `starttls` (default false), `ssl`
(SMTP over TLS from the first byte, usually port 465; default false), `username` / `password`
(log in when both are set), `only_fatal` (mail only when the agent gives up on a service; default
false), `subject_prefix` (default "[suite-agent]"), `timeout` (seconds per mail, default 3).
"""

from __future__ import annotations

import smtplib
import socket
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

from suite_agent import __version__
from suite_agent.plugins import PluginBase, PluginInfo

from ._options import flag, integer, number, text


class EmailAlertsPlugin(PluginBase):
    def get_info(self) -> PluginInfo:
        return PluginInfo(name="email_alerts", version=__version__,
                          description="Mails service errors and fatal states", author="suite-agent",
                          hooks=["service_error"])

    def validate_options(self, options: dict[str, Any]) -> None:
        to = options.get("to")
        if isinstance(to, str):
            to = [to]
        if not to or not isinstance(to, list) or not all(isinstance(a, str) and "@" in a for a in to):
            raise ValueError("to must be an email address or a list of them")
        self.to: list[str] = to
        self.sender = text(options, "from") or f"suite-agent@{socket.getfqdn()}"
        self.host = text(options, "smtp_host", "localhost") or "localhost"
        self.port = integer(options, "smtp_port", 25, minimum=1)
        self.starttls = flag(options, "starttls")
        self.ssl = flag(options, "ssl")
        self.username = text(options, "username")
        self.password = text(options, "password")
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        self.only_fatal = flag(options, "only_fatal")
        self.subject_prefix = text(options, "subject_prefix", "[suite-agent]") or ""
        self.timeout = number(options, "timeout", 3.0, minimum=0.1)

    def on_service_error(self, service_name: str, error: Exception) -> None:
        fatal = bool(getattr(error, "fatal", False))
        if self.only_fatal and not fatal:
            return
        what = "is FATAL (the agent gave up)" if fatal else "error"
        message = EmailMessage()
        message["Subject"] = f"{self.subject_prefix} {service_name} {what}: {error}".strip()
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(self._body(service_name, error, fatal))
        self._send(message)

    def _body(self, service_name: str, error: Exception, fatal: bool) -> str:
        when = getattr(error, "time", 0.0) or datetime.now(UTC).timestamp()
        rows = [
            ("Service", service_name),
            ("Instance", getattr(error, "instance", None)),
            ("Error", str(error)),
            ("State", "fatal" if fatal else None),
            ("Exit code", getattr(error, "exit_code", None)),
            ("Signal", getattr(error, "signal", None)),
            ("PID", getattr(error, "pid", None)),
            ("Time", datetime.fromtimestamp(when, UTC).isoformat(timespec="seconds")),
            ("Host", socket.gethostname()),
        ]
        return "\n".join(f"{name}: {value}" for name, value in rows if value is not None) + "\n"

    def _send(self, message: EmailMessage) -> None:
        smtp_class = smtplib.SMTP_SSL if self.ssl else smtplib.SMTP
        with smtp_class(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username is not None and self.password is not None:
                smtp.login(self.username, self.password)
            smtp.send_message(message)
