"""Content moderation: policies, prompt checks, output checks, escalation and audit records.

The gateway's entry points live in `moderation.service`; the trust-and-safety API and
review page in `moderation.endpoints` (`router`).
"""
