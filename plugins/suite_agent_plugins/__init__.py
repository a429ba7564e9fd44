"""The plugins that ship with suite-agent; turn one on with `plugins: {NAME: {options}}` in conf.d.

| entry point      | class                                   |
|------------------|-----------------------------------------|
| `slack_notifier` | `slack_notifier.SlackNotifierPlugin`    |
| `audit_log`      | `audit_log.AuditLogPlugin`              |
| `email_alerts`   | `email_alerts.EmailAlertsPlugin`        |
| `example`        | `example.CustomMetricsPlugin`           |
"""
