-- The W3C traceparent of the call that queued each job (empty when tracing was off), so the span of the
-- job's run can link to it (core/tracing.py). Jobs queued before this migration link to nothing.

ALTER TABLE jobs ADD COLUMN traceparent text NOT NULL DEFAULT '';
