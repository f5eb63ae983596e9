-- The least a lease + result round trip must write, on the pool's own
-- layout (store/schema.rs: partial indexes by state, fillfactor): a queue
-- of replicas, devices' records, the replay guard, receipts.
CREATE TABLE replicas (
    id BIGSERIAL PRIMARY KEY, task_id BIGINT NOT NULL, state TEXT NOT NULL, device_id BIGINT,
    lease_token TEXT, lease_deadline_ms BIGINT, output_sha256 TEXT, valid BIGINT
) WITH (fillfactor = 80);
CREATE INDEX replicas_queued ON replicas(task_id, id) WHERE state = 'queued';
CREATE INDEX replicas_expiry ON replicas(lease_deadline_ms) WHERE state = 'leased';
CREATE INDEX replicas_task ON replicas(task_id, state);
CREATE TABLE devices (
    id BIGINT PRIMARY KEY, valid_results BIGINT NOT NULL DEFAULT 0, credits DOUBLE PRECISION NOT NULL DEFAULT 0
) WITH (fillfactor = 80);
CREATE TABLE seen_signatures (signature TEXT PRIMARY KEY, expires_ms BIGINT NOT NULL);
CREATE INDEX seen_signatures_expiry ON seen_signatures(expires_ms);
CREATE TABLE receipts (
    id BIGSERIAL PRIMARY KEY, replica_id BIGINT NOT NULL UNIQUE, device_id BIGINT NOT NULL,
    payload TEXT NOT NULL, signature TEXT NOT NULL
);
INSERT INTO devices (id) SELECT g FROM generate_series(1, 10000) g;
