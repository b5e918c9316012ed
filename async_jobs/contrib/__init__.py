"""Optional integrations, each behind its own extra and imported only on demand.

- :mod:`async_jobs.contrib.redis` (extra ``redis``): durable watches shared by many service
  instances, on Redis Streams consumer groups.
- :mod:`async_jobs.contrib.otel` (extra ``otel``): OpenTelemetry spans and metrics from
  :mod:`async_jobs.events`.

``import async_jobs`` never imports anything from here.
"""
