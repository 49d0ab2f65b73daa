-- Each progress event records which attempt of its job it belongs to (jobs.attempts at that change),
-- so a watcher can tell a takeover's restart from 0 (a new attempt) from a glitch.
-- Events recorded before this migration say 0.

ALTER TABLE progress_events ADD COLUMN attempt integer NOT NULL DEFAULT 0;

CREATE OR REPLACE FUNCTION record_job_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.seq <> OLD.seq THEN
        INSERT INTO progress_events (job_id, seq, stage, done, total, at, attempt)
        VALUES (NEW.job_id, NEW.seq, NEW.stage, NEW.done, NEW.total, NEW.updated_at, NEW.attempts)
        ON CONFLICT DO NOTHING;
        -- Only wakes listeners (delivered on commit); they read the events table.
        PERFORM pg_notify('derivatives_progress', NEW.job_id::text);
    END IF;
    RETURN NEW;
END
$$;
