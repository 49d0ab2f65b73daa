-- Initial schema: assets and their derivatives, works, bundles, and the job queue.

CREATE TABLE assets (
    asset_id      text PRIMARY KEY,
    content_type  text NOT NULL,
    size_bytes    bigint NOT NULL,
    sha512        text NOT NULL,
    width         integer NOT NULL DEFAULT 0,
    height        integer NOT NULL DEFAULT 0,
    filename      text NOT NULL DEFAULT '',
    bucket        text NOT NULL,
    object_key    text NOT NULL,
    -- {key: {"reason": text, "failed_at": iso8601}} for the current original.
    derivative_failures jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE derivatives (
    asset_id        text NOT NULL REFERENCES assets (asset_id) ON DELETE CASCADE,
    key             text NOT NULL,
    content_type    text NOT NULL,
    size_bytes      bigint NOT NULL,
    width           integer NOT NULL DEFAULT 0,
    height          integer NOT NULL DEFAULT 0,
    sha512          text NOT NULL,
    original_sha512 text NOT NULL,
    bucket          text NOT NULL,
    object_key      text NOT NULL,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (asset_id, key)
);

CREATE TABLE works (
    work_id    text PRIMARY KEY,
    title      text NOT NULL,
    creator    text NOT NULL DEFAULT '',
    url        text NOT NULL DEFAULT '',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE work_members (
    work_id  text NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,
    position integer NOT NULL,
    -- RESTRICT: an asset in a work cannot vanish under a bundle build.
    asset_id text NOT NULL REFERENCES assets (asset_id) ON DELETE RESTRICT,
    PRIMARY KEY (work_id, position)
);
CREATE INDEX work_members_asset ON work_members (asset_id);

-- The durable queue. Claimed with FOR UPDATE SKIP LOCKED; a worker heartbeats while
-- it runs, and a job whose heartbeat is stale is re-queued.
CREATE TABLE jobs (
    job_id       uuid PRIMARY KEY,
    kind         text NOT NULL,             -- create_derivatives | build_bundle
    payload      jsonb NOT NULL,
    stage        text NOT NULL DEFAULT 'queued', -- queued | running | finishing | succeeded | failed
    done         bigint NOT NULL DEFAULT 0,
    total        bigint NOT NULL DEFAULT 0,
    -- Bumped on every visible change; WatchProgress orders events by it.
    seq          bigint NOT NULL DEFAULT 1,
    attempts     integer NOT NULL DEFAULT 0,
    max_attempts integer NOT NULL DEFAULT 5,
    run_after    timestamptz NOT NULL DEFAULT now(),
    worker_id    text,
    heartbeat_at timestamptz,
    failures     jsonb NOT NULL DEFAULT '[]'::jsonb,
    error        text,
    result       jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);
CREATE INDEX jobs_ready ON jobs (run_after) WHERE stage = 'queued';
CREATE INDEX jobs_running ON jobs (heartbeat_at) WHERE stage IN ('running', 'finishing');

CREATE TABLE bundles (
    bundle_id        uuid PRIMARY KEY,
    work_id          text NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,
    kind             text NOT NULL,            -- pdf | zip
    checksum         text NOT NULL,
    status           text NOT NULL DEFAULT 'in_progress', -- in_progress | success | error
    job_id           uuid REFERENCES jobs (job_id) ON DELETE SET NULL,
    bucket           text NOT NULL,
    object_key       text NOT NULL,
    size_bytes       bigint NOT NULL DEFAULT 0,
    filename         text NOT NULL DEFAULT '',
    error            text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    last_accessed_at timestamptz NOT NULL DEFAULT now(),
    -- Exactly one build per work, kind and inputs, across server processes.
    UNIQUE (work_id, kind, checksum)
);
