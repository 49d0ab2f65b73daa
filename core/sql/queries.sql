-- Every SQL statement the service runs, by name. Loaded by core.database.load_queries.
-- A block starts with `-- name: NAME` and runs to the next one.

-- name: get_asset
SELECT * FROM assets WHERE asset_id = %(asset_id)s;

-- name: lock_asset
SELECT * FROM assets WHERE asset_id = %(asset_id)s FOR UPDATE;

-- name: get_assets
SELECT * FROM assets WHERE asset_id = ANY(%(asset_ids)s::text[]);

-- name: lock_assets_originals
-- Attaching a batch: the assets' rows locked in asset_id order (as lock_member_assets), so two batches never deadlock.
SELECT asset_id, sha512 FROM assets WHERE asset_id = ANY(%(asset_ids)s::text[]) ORDER BY asset_id FOR UPDATE;

-- name: insert_asset
INSERT INTO assets (asset_id, content_type, size_bytes, sha512, width, height, filename, bucket, object_key)
VALUES (%(asset_id)s, %(content_type)s, %(size_bytes)s, %(sha512)s, %(width)s, %(height)s, %(filename)s,
        %(bucket)s, %(object_key)s)
ON CONFLICT (asset_id) DO NOTHING
RETURNING *;

-- name: replace_original
UPDATE assets
SET content_type = %(content_type)s, size_bytes = %(size_bytes)s, sha512 = %(sha512)s, width = %(width)s,
    height = %(height)s, filename = %(filename)s, bucket = %(bucket)s, object_key = %(object_key)s,
    derivative_failures = '{}'::jsonb, updated_at = now()
WHERE asset_id = %(asset_id)s
RETURNING *;

-- name: list_asset_ids
SELECT asset_id FROM assets WHERE asset_id > %(after)s ORDER BY asset_id LIMIT %(limit)s;

-- name: delete_asset
DELETE FROM assets WHERE asset_id = %(asset_id)s RETURNING *;

-- name: works_containing_asset
SELECT DISTINCT work_id FROM work_members WHERE asset_id = %(asset_id)s ORDER BY work_id LIMIT 10;

-- name: list_derivatives
SELECT * FROM derivatives WHERE asset_id = %(asset_id)s ORDER BY key;

-- name: derivative_keys_of_assets
SELECT asset_id, key, original_sha512 FROM derivatives WHERE asset_id = ANY(%(asset_ids)s::text[]);

-- name: get_asset_with_derivatives
-- GetAsset in one round trip: the asset row and its derivatives as a JSON array.
SELECT a.*, COALESCE(
    (SELECT json_agg(d ORDER BY d.key) FROM derivatives d WHERE d.asset_id = a.asset_id), '[]'::json
) AS derivatives
FROM assets a WHERE a.asset_id = %(asset_id)s;

-- name: get_derivative
SELECT * FROM derivatives WHERE asset_id = %(asset_id)s AND key = %(key)s;

-- name: delete_derivatives_of_asset
DELETE FROM derivatives WHERE asset_id = %(asset_id)s RETURNING bucket, object_key;

-- name: upsert_derivatives
-- Attach derivatives, of one asset or several, in one round trip. `rows` is a JSON array of derivative rows
-- (no (asset_id, key) twice). Returns each row with the replaced row's location (old_bucket/old_object_key,
-- NULL when new). Callers hold the assets' row locks, which serialize every change to their derivatives.
-- (No FOR UPDATE in `old`: it would skip the rows this same statement updates.)
-- It also clears recorded failures of the keys attached.
WITH new AS (
    SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb) AS n(
        asset_id text, key text, content_type text, size_bytes bigint, width integer, height integer,
        sha512 text, original_sha512 text, bucket text, object_key text, metadata jsonb)
), old AS (
    SELECT d.asset_id, d.key, d.bucket, d.object_key FROM derivatives d JOIN new USING (asset_id, key)
), cleared AS (
    UPDATE assets a SET derivative_failures = a.derivative_failures - k.keys
    FROM (SELECT asset_id, array_agg(key) AS keys FROM new GROUP BY asset_id) k
    WHERE a.asset_id = k.asset_id AND a.derivative_failures ?| k.keys
), up AS (
    INSERT INTO derivatives (asset_id, key, content_type, size_bytes, width, height, sha512, original_sha512,
                             bucket, object_key, metadata)
    SELECT asset_id, key, content_type, size_bytes, width, height, sha512, original_sha512, bucket, object_key,
           COALESCE(metadata, '{}'::jsonb)
    FROM new
    ON CONFLICT (asset_id, key) DO UPDATE
    SET content_type = EXCLUDED.content_type, size_bytes = EXCLUDED.size_bytes, width = EXCLUDED.width,
        height = EXCLUDED.height, sha512 = EXCLUDED.sha512, original_sha512 = EXCLUDED.original_sha512,
        bucket = EXCLUDED.bucket, object_key = EXCLUDED.object_key, metadata = EXCLUDED.metadata,
        created_at = now()
    RETURNING *
)
SELECT up.*, old.bucket AS old_bucket, old.object_key AS old_object_key
FROM up LEFT JOIN old ON old.asset_id = up.asset_id AND old.key = up.key;

-- name: delete_derivative
DELETE FROM derivatives WHERE asset_id = %(asset_id)s AND key = %(key)s RETURNING bucket, object_key;

-- name: set_derivative_failures
-- Remember why keys could not be made, of each asset whose original is still the one tried. `failures` is a
-- JSON array of {asset_id, original_sha512, key, reason}.
UPDATE assets a SET derivative_failures = a.derivative_failures || f.failures
FROM (
    SELECT x.asset_id, x.original_sha512,
           jsonb_object_agg(x.key, jsonb_build_object('reason', x.reason, 'failed_at', now())) AS failures
    FROM jsonb_to_recordset(%(failures)s::jsonb) AS x(asset_id text, original_sha512 text, key text, reason text)
    GROUP BY x.asset_id, x.original_sha512
) f
WHERE a.asset_id = f.asset_id AND a.sha512 = f.original_sha512;

-- name: get_work
SELECT * FROM works WHERE work_id = %(work_id)s;

-- name: upsert_work
INSERT INTO works (work_id, title, creator, url)
VALUES (%(work_id)s, %(title)s, %(creator)s, %(url)s)
ON CONFLICT (work_id) DO UPDATE
SET title = EXCLUDED.title, creator = EXCLUDED.creator, url = EXCLUDED.url, updated_at = now()
RETURNING *;

-- name: delete_work_members
DELETE FROM work_members WHERE work_id = %(work_id)s;

-- name: insert_work_members
INSERT INTO work_members (work_id, position, asset_id)
SELECT %(work_id)s, m.ord::integer, m.asset_id
FROM unnest(%(asset_ids)s::text[]) WITH ORDINALITY AS m (asset_id, ord);

-- name: list_work_members
SELECT asset_id FROM work_members WHERE work_id = %(work_id)s ORDER BY position;

-- name: existing_asset_ids
SELECT asset_id FROM assets WHERE asset_id = ANY(%(asset_ids)s::text[]);

-- name: lock_member_assets
-- PutWork locks its members (KEY SHARE, as the foreign keys would) before the work: assets are always
-- locked before works, so PutWork and a member's PutAsset never deadlock.
SELECT asset_id FROM assets WHERE asset_id = ANY(%(asset_ids)s::text[]) ORDER BY asset_id FOR KEY SHARE;

-- name: insert_job
INSERT INTO jobs (job_id, kind, payload, total, owner, traceparent)
VALUES (%(job_id)s, %(kind)s, %(payload)s, %(total)s, %(owner)s, %(traceparent)s)
RETURNING *;

-- name: active_jobs_of_owner
-- Counts at most %(limit)s rows: the cost of the check does not grow with a flood.
SELECT count(*) AS active FROM (
    SELECT 1 FROM jobs WHERE owner = %(owner)s AND stage IN ('queued', 'running', 'finishing') LIMIT %(limit)s
) AS active;

-- name: get_job
SELECT * FROM jobs WHERE job_id = %(job_id)s;

-- name: events_after
SELECT * FROM progress_events WHERE job_id = %(job_id)s AND seq > %(after_seq)s ORDER BY seq LIMIT %(limit)s;

-- name: prune_progress_events
-- In batches: the sweep must never hold the hub up for long.
DELETE FROM progress_events WHERE (job_id, seq) IN (
    SELECT e.job_id, e.seq FROM progress_events e JOIN jobs j USING (job_id)
    WHERE j.finished_at < now() - make_interval(secs => %(older_than_seconds)s)
    LIMIT 5000
);

-- name: bundle_job
SELECT job_id FROM bundles WHERE bundle_id = %(bundle_id)s;

-- name: claim_job
-- One ready job, skipping rows other workers hold. A job whose worker stopped
-- heartbeating is ready again (its lease expired) unless it has used up its attempts
-- (fail_exhausted_jobs ends those). A new attempt starts over: done and failures reset.
UPDATE jobs SET stage = 'running', attempts = attempts + 1, worker_id = %(worker_id)s, done = 0,
               failures = '[]'::jsonb, heartbeat_at = now(), updated_at = now(), seq = seq + 1
WHERE job_id = (
    SELECT job_id FROM jobs
    WHERE kind = ANY(%(kinds)s::text[])
      AND ((stage = 'queued' AND run_after <= now())
           OR (stage IN ('running', 'finishing') AND attempts < max_attempts
               AND heartbeat_at < now() - make_interval(secs => %(lease_seconds)s)))
    ORDER BY run_after, created_at
    FOR UPDATE SKIP LOCKED
    LIMIT 1
)
RETURNING *;

-- name: fail_exhausted_jobs
-- Jobs whose runner died on every attempt (a crash, an out-of-memory kill): failed for good.
UPDATE jobs SET stage = 'failed', worker_id = NULL, finished_at = now(), updated_at = now(), seq = seq + 1,
               error = format('gave up after %%s attempts: the runner stopped responding each time', attempts)
WHERE job_id IN (
    SELECT job_id FROM jobs
    WHERE stage IN ('running', 'finishing') AND attempts >= max_attempts
      AND heartbeat_at < now() - make_interval(secs => %(lease_seconds)s)
    FOR UPDATE SKIP LOCKED LIMIT 100
)
RETURNING *;

-- name: prune_jobs
-- Finished jobs no bundle points at, long after they ended (their events go with them).
DELETE FROM jobs WHERE job_id IN (
    SELECT j.job_id FROM jobs j
    WHERE j.finished_at < now() - make_interval(secs => %(older_than_seconds)s)
      AND NOT EXISTS (SELECT 1 FROM bundles b WHERE b.job_id = j.job_id)
    LIMIT 1000
);

-- name: heartbeat_job
UPDATE jobs SET heartbeat_at = now() WHERE job_id = %(job_id)s AND worker_id = %(worker_id)s
RETURNING job_id;

-- name: progress_job
-- new_failures are appended: a job with many failures does not rewrite them all each time.
UPDATE jobs SET done = %(done)s, total = %(total)s, stage = %(stage)s, failures = failures || %(new_failures)s,
               heartbeat_at = now(), updated_at = now(), seq = seq + 1
WHERE job_id = %(job_id)s AND worker_id = %(worker_id)s
RETURNING *;

-- name: finish_job
UPDATE jobs SET stage = %(stage)s, done = %(done)s, failures = failures || %(new_failures)s, error = %(error)s,
               finished_at = now(), updated_at = now(), seq = seq + 1, worker_id = NULL
WHERE job_id = %(job_id)s AND worker_id = %(worker_id)s
RETURNING *;

-- name: retry_job
UPDATE jobs SET stage = 'queued', run_after = now() + make_interval(secs => %(delay_seconds)s), error = %(error)s,
               worker_id = NULL, updated_at = now(), seq = seq + 1
WHERE job_id = %(job_id)s AND worker_id = %(worker_id)s
RETURNING *;

-- name: get_bundle
SELECT b.*, j.stage, j.done, j.total, j.seq, extract(epoch FROM now() - b.last_accessed_at)::float8 AS access_age_seconds
FROM bundles b LEFT JOIN jobs j ON j.job_id = b.job_id
WHERE b.bundle_id = %(bundle_id)s;

-- name: find_bundle
SELECT b.*, j.stage, j.done, j.total, j.seq, extract(epoch FROM now() - b.last_accessed_at)::float8 AS access_age_seconds
FROM bundles b LEFT JOIN jobs j ON j.job_id = b.job_id
WHERE b.work_id = %(work_id)s AND b.kind = %(kind)s AND b.checksum = %(checksum)s;

-- name: lock_bundle
SELECT * FROM bundles WHERE work_id = %(work_id)s AND kind = %(kind)s AND checksum = %(checksum)s FOR UPDATE;

-- name: insert_bundle
-- The unique (work, kind, checksum) claim: of racing callers, exactly one inserts.
INSERT INTO bundles (bundle_id, work_id, kind, checksum, bucket, object_key, filename)
VALUES (%(bundle_id)s, %(work_id)s, %(kind)s, %(checksum)s, %(bucket)s, %(object_key)s, %(filename)s)
ON CONFLICT (work_id, kind, checksum) DO NOTHING
RETURNING bundle_id;

-- name: restart_bundle
UPDATE bundles SET status = 'in_progress', job_id = %(job_id)s, error = NULL, size_bytes = 0,
                   updated_at = now(), last_accessed_at = now()
WHERE bundle_id = %(bundle_id)s;

-- name: set_bundle_job
UPDATE bundles SET job_id = %(job_id)s WHERE bundle_id = %(bundle_id)s;

-- name: touch_bundle
-- Callers skip it while the stored access is younger than the flush interval (core/bundles.py).
UPDATE bundles SET last_accessed_at = now() WHERE bundle_id = %(bundle_id)s RETURNING bundle_id;

-- name: hot_bundle
-- A cache hit in one indexed read: the work's stored inputs checksum and the bundle built from it.
SELECT i.checksum AS inputs_checksum, i.fingerprint, b.*, j.stage, j.done, j.total, j.seq,
       extract(epoch FROM now() - b.last_accessed_at)::float8 AS access_age_seconds
FROM bundle_inputs i
LEFT JOIN bundles b ON b.work_id = i.work_id AND b.kind = i.kind AND b.checksum = i.checksum
LEFT JOIN jobs j ON j.job_id = b.job_id
WHERE i.work_id = %(work_id)s AND i.kind = %(kind)s;

-- name: upsert_bundle_inputs
INSERT INTO bundle_inputs (work_id, kind, checksum, fingerprint)
VALUES (%(work_id)s, %(kind)s, %(checksum)s, %(fingerprint)s)
ON CONFLICT (work_id, kind) DO UPDATE
SET checksum = EXCLUDED.checksum, fingerprint = EXCLUDED.fingerprint, updated_at = now();

-- name: lock_work
SELECT work_id FROM works WHERE work_id = %(work_id)s FOR UPDATE;

-- name: share_work
-- Waits for a transaction that is changing the work's inputs, and holds the next one off.
SELECT work_id FROM works WHERE work_id = %(work_id)s FOR SHARE;

-- name: lock_works_of_asset
-- Serializes every refresh of a work's inputs checksum (assets are always locked before works).
SELECT work_id FROM works
WHERE work_id IN (SELECT work_id FROM work_members WHERE asset_id = %(asset_id)s)
ORDER BY work_id FOR UPDATE;

-- name: works_without_inputs
-- Works whose stored inputs are missing or were computed under another configuration (backfill).
SELECT w.work_id FROM works w
WHERE NOT EXISTS (
    SELECT 1 FROM bundle_inputs i
    WHERE i.work_id = w.work_id AND i.fingerprint = %(fingerprint)s
    HAVING count(*) = %(kinds)s
)
ORDER BY w.work_id LIMIT %(limit)s;

-- name: bundle_succeeded
-- Fenced by the job's owner: a builder that lost its lease cannot mark the bundle.
UPDATE bundles b SET status = 'success', size_bytes = %(size_bytes)s, error = NULL, updated_at = now()
FROM jobs j
WHERE b.bundle_id = %(bundle_id)s AND j.job_id = b.job_id AND j.job_id = %(job_id)s AND j.worker_id = %(worker_id)s
RETURNING b.bundle_id;

-- name: bundle_failed
-- Fenced like bundle_succeeded: only the job's current owner may mark the bundle (NULL owner:
-- the job was given up by fail_exhausted_jobs).
UPDATE bundles b SET status = 'error', error = %(error)s, updated_at = now()
FROM jobs j
WHERE b.bundle_id = %(bundle_id)s AND j.job_id = b.job_id AND j.job_id = %(job_id)s
  AND j.worker_id IS NOT DISTINCT FROM %(worker_id)s;

-- name: reap_idle_bundles
-- Bundles nobody asked for within the idle window; SKIP LOCKED lets several servers reap.
DELETE FROM bundles WHERE bundle_id IN (
    SELECT bundle_id FROM bundles
    WHERE status <> 'in_progress' AND last_accessed_at < now() - make_interval(secs => %(idle_seconds)s)
      AND last_accessed_at < now() - make_interval(secs => %(recent_seconds)s)
    ORDER BY last_accessed_at LIMIT 500 FOR UPDATE SKIP LOCKED
) AND status <> 'in_progress'
RETURNING bucket, object_key, size_bytes, kind;

-- name: reap_over_budget
-- Least recently used finished bundles beyond the total-size budget, except those accessed within
-- `recent_seconds` (access records are flushed lazily: another process may have just handed one out).
-- The outer checks matter: the subquery's rows are not locked, and a row restarted or touched since
-- its snapshot is re-checked against them only.
DELETE FROM bundles WHERE bundle_id IN (
    SELECT bundle_id FROM (
        SELECT bundle_id, last_accessed_at,
               sum(size_bytes) OVER (ORDER BY last_accessed_at DESC, bundle_id) AS running
        FROM bundles WHERE status = 'success'
    ) ranked
    WHERE running > %(budget_bytes)s AND last_accessed_at < now() - make_interval(secs => %(recent_seconds)s)
) AND status = 'success' AND last_accessed_at < now() - make_interval(secs => %(recent_seconds)s)
RETURNING bucket, object_key, size_bytes, kind;

-- name: bundle_object_in_use
-- COLLATE "C" here and below: the (bucket, object_key) indexes are in the "C" collation (migration 0007);
-- equality is the same in every deterministic collation, so the answer is too.
SELECT 1 AS found FROM bundles WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s LIMIT 1;

-- name: work_members_with_assets
SELECT m.position, a.asset_id, a.content_type, a.sha512, a.width, a.height, a.bucket, a.object_key
FROM work_members m JOIN assets a USING (asset_id)
WHERE m.work_id = %(work_id)s ORDER BY m.position;

-- name: original_referenced
SELECT 1 AS found FROM assets WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s LIMIT 1;

-- name: derivative_keys_referenced
SELECT object_key FROM derivatives
WHERE asset_id = ANY(%(asset_ids)s::text[]) AND object_key = ANY(%(object_keys)s::text[]);

-- name: referenced_keys
-- Every key of a bucket some row points at, in bytewise order (the order S3 lists in), for a cursor.
SELECT object_key COLLATE "C" AS object_key FROM (
    SELECT object_key FROM assets WHERE bucket = %(bucket)s
    UNION ALL SELECT object_key FROM derivatives WHERE bucket = %(bucket)s
    UNION ALL SELECT object_key FROM bundles WHERE bucket = %(bucket)s
) AS referenced
ORDER BY 1;

-- name: object_referenced
-- Asked again, just before a delete, of each object the sweep found unreferenced.
SELECT EXISTS (SELECT 1 FROM assets WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s)
    OR EXISTS (SELECT 1 FROM derivatives WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s)
    OR EXISTS (SELECT 1 FROM bundles WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s) AS found;

-- name: installation_id
SELECT id FROM installation;

-- name: build_in_progress
-- Whether a bundle is being built into this key (its multipart upload is not abandoned).
SELECT EXISTS (
    SELECT 1 FROM bundles
    WHERE bucket = %(bucket)s AND object_key COLLATE "C" = %(object_key)s AND status = 'in_progress'
) AS found;

-- name: recent_works
SELECT work_id, title FROM works ORDER BY updated_at DESC, work_id LIMIT %(limit)s;

-- name: metrics_jobs
-- The metrics endpoint, at each scrape: jobs not finished by kind and stage, and how long the oldest job
-- ready to run has waited. Each branch matches a partial index (jobs_ready, jobs_running): finished jobs,
-- most of the table, are never read.
SELECT kind, stage, count(*) AS jobs,
       coalesce(extract(epoch FROM now() - min(run_after) FILTER (WHERE run_after <= now())), 0)::float8
           AS oldest_ready_seconds
FROM jobs WHERE stage = 'queued' GROUP BY kind, stage
UNION ALL
SELECT kind, stage, count(*) AS jobs, 0::float8 AS oldest_ready_seconds
FROM jobs WHERE stage IN ('running', 'finishing') GROUP BY kind, stage;

-- name: metrics_bundles
-- The metrics endpoint, at each scrape: built bundles stored, and their bytes.
SELECT kind, count(*) AS bundles, coalesce(sum(size_bytes), 0)::bigint AS size_bytes
FROM bundles WHERE status = 'success' GROUP BY kind;
