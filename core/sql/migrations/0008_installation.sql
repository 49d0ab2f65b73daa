-- This database's identity. The storage sweep writes it into each bucket it sweeps
-- (`.derivatives-installation`) and never sweeps a bucket that carries another one: a server started
-- against the wrong database (an empty embedded one, a staging copy, a restore) must not take the bytes of
-- the installation whose buckets it reached.

CREATE TABLE installation (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    created_at timestamptz NOT NULL DEFAULT now(),
    singleton  boolean NOT NULL DEFAULT true UNIQUE CHECK (singleton)
);
INSERT INTO installation DEFAULT VALUES;
