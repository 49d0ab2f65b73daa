-- Indexes for the periodic sweeps: the bundle reaper, pruning finished jobs and their events.

CREATE INDEX bundles_idle ON bundles (last_accessed_at) WHERE status <> 'in_progress';
CREATE INDEX bundles_job ON bundles (job_id);
CREATE INDEX bundles_object ON bundles (bucket, object_key);
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
