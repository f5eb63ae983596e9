-- One round trip, a statement per request as the store runs it today, cut
-- to its least: a lease (replay guard, claim) and a result (replay guard,
-- fenced report, the device's record, a receipt). No quorum read, no task
-- lock, no trust re-check: a floor, not a model.
\set dev random(1, 10000)
BEGIN;
SET LOCAL synchronous_commit = off;
INSERT INTO seen_signatures VALUES (md5(random()::text), 0);
UPDATE replicas SET state = 'leased', device_id = :dev, lease_token = 'tok', lease_deadline_ms = 1
 WHERE id = (SELECT id FROM replicas WHERE state = 'queued' ORDER BY task_id, id LIMIT 1 FOR UPDATE SKIP LOCKED)
 RETURNING id AS rid \gset
COMMIT;
BEGIN;
INSERT INTO seen_signatures VALUES (md5(random()::text), 0);
UPDATE replicas SET state = 'reported', output_sha256 = 'x' WHERE id = :rid AND lease_token = 'tok';
UPDATE devices SET valid_results = valid_results + 1, credits = credits + 1 WHERE id = :dev;
INSERT INTO receipts (replica_id, device_id, payload, signature) VALUES (:rid, :dev, repeat('p', 300), repeat('s', 128));
COMMIT;
