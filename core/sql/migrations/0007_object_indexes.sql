-- The storage sweeper (core/reclaim.py) reads every referenced key of a bucket in bytewise order and asks
-- whether one key is referenced: both need (bucket, object_key) indexes, in the "C" collation (S3's order).
-- The originals' index also serves PutAsset's "is my upload referenced?" check after a failed commit.

CREATE INDEX assets_object ON assets (bucket, object_key COLLATE "C");
CREATE INDEX derivatives_object ON derivatives (bucket, object_key COLLATE "C");
CREATE INDEX bundles_object_c ON bundles (bucket, object_key COLLATE "C");
DROP INDEX bundles_object;
