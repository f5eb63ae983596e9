-- Eight round trips at once, set-oriented: each statement serves eight
-- requests (the replay guard, the claim, a trust re-check's read, the
-- fenced lock, a quorum's read, reports with their receipts, devices).
\set dev random(1, 10000)
BEGIN;
SET LOCAL synchronous_commit = off;
INSERT INTO seen_signatures SELECT md5(random()::text), 0 FROM generate_series(1, 8);
WITH c AS (SELECT id FROM replicas WHERE state = 'queued' ORDER BY task_id, id LIMIT 8 FOR UPDATE SKIP LOCKED)
UPDATE replicas r SET state = 'leased', device_id = :dev, lease_token = 't' || :client_id, lease_deadline_ms = 1
  FROM c WHERE r.id = c.id;
SELECT count(*) FROM replicas o WHERE o.state IN ('leased', 'reported')
  AND o.task_id IN (SELECT task_id FROM replicas WHERE state = 'leased' AND lease_token = 't' || :client_id);
COMMIT;
BEGIN;
INSERT INTO seen_signatures SELECT md5(random()::text), 0 FROM generate_series(1, 8);
SELECT id, task_id FROM replicas WHERE state = 'leased' AND lease_token = 't' || :client_id ORDER BY id FOR UPDATE;
SELECT count(*) FROM replicas o
  WHERE o.task_id IN (SELECT task_id FROM replicas WHERE state = 'leased' AND lease_token = 't' || :client_id);
WITH u AS (UPDATE replicas SET state = 'reported', output_sha256 = 'x', lease_token = NULL
           WHERE state = 'leased' AND lease_token = 't' || :client_id RETURNING id, device_id)
INSERT INTO receipts (replica_id, device_id, payload, signature)
  SELECT id, device_id, repeat('p', 300), repeat('s', 128) FROM u;
UPDATE devices SET valid_results = valid_results + 1, credits = credits + 1
  WHERE id IN (SELECT (random() * 9999 + 1)::int FROM generate_series(1, 8) ORDER BY 1);
COMMIT;
