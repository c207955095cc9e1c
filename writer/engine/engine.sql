-- The engine's own statements (writer/engine/batch.py), one block per `-- name:` line.

-- name: claim_intents
-- The ledger: ids not seen before are recorded and returned; the others are redeliveries.
INSERT INTO writer_ledger (intent_id, batch_seq)
SELECT unnest(%(ids)s::uuid[]), %(batch_seq)s
ON CONFLICT (intent_id) DO NOTHING
RETURNING intent_id


-- name: renumber_batch
-- A batch that reaches its COMMIT after a later-numbered one of the same writer committed
-- takes a new number, so numbers follow the commit order (writer/engine/apply.py).
WITH n AS (SELECT nextval('writer_batch_seq') AS seq),
moved AS (
    UPDATE writer_ledger SET batch_seq = (SELECT seq FROM n)
    WHERE intent_id = ANY(%(ids)s::uuid[])
)
SELECT seq FROM n
