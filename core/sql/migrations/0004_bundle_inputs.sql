-- The current inputs checksum of each work's bundles, kept up to date as the inputs change
-- (PutWork, and a member's original replaced), so a cache-hit FindOrCreateBundle is one indexed read.
-- `fingerprint` names the configuration the checksum was computed under (definitions, bundle settings,
-- format version): a process whose configuration differs recomputes it, as it did before this table.
-- Existing works get their rows on first use and from the maintenance backfill.

CREATE TABLE bundle_inputs (
    work_id     text NOT NULL REFERENCES works (work_id) ON DELETE CASCADE,
    kind        text NOT NULL,
    checksum    text NOT NULL,
    fingerprint text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (work_id, kind)
);
