"""The shared kit: what every service needs and nothing domain-specific.

config → settings; db → async sessions and migrations; errors → the error format;
events/outbox/bus → the event envelope, the transactional outbox and its relay, the
inbox-backed consumers; auth → JWT verification; http/grpc → server factories;
telemetry → OpenTelemetry; runtime → starting and stopping a service process.
"""
