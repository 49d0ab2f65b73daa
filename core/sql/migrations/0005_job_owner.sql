-- Who queued each job (the authenticated principal; "anonymous" without authentication), so one
-- caller's queued and running jobs can be counted against DERIVATIVES_MAX_JOBS_PER_PRINCIPAL.
-- Jobs queued before this migration belong to nobody ('') and count against no one.

ALTER TABLE jobs ADD COLUMN owner text NOT NULL DEFAULT '';
CREATE INDEX jobs_active_owner ON jobs (owner) WHERE stage IN ('queued', 'running', 'finishing');
