-- Progress events: one row per visible change of a job (every seq), so a watcher can
-- replay what it missed. Written and announced by a trigger, so no code path can
-- change a job's progress without recording and announcing it.

CREATE TABLE progress_events (
    job_id uuid NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq    bigint NOT NULL,
    stage  text NOT NULL,
    done   bigint NOT NULL,
    total  bigint NOT NULL,
    at     timestamptz NOT NULL,
    PRIMARY KEY (job_id, seq)
);

CREATE FUNCTION record_job_progress() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.seq <> OLD.seq THEN
        INSERT INTO progress_events (job_id, seq, stage, done, total, at)
        VALUES (NEW.job_id, NEW.seq, NEW.stage, NEW.done, NEW.total, NEW.updated_at)
        ON CONFLICT DO NOTHING;
        -- Only wakes listeners (delivered on commit); they read the events table.
        PERFORM pg_notify('derivatives_progress', NEW.job_id::text);
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER jobs_progress AFTER INSERT OR UPDATE ON jobs
    FOR EACH ROW EXECUTE FUNCTION record_job_progress();
