-- The engine's own statements (writer/engine/batch.py), one block per `-- name:` line.

-- name: claim_intents
-- The ledger: ids not seen before are recorded and returned; the others are redeliveries.
INSERT INTO writer_ledger (intent_id, batch_seq)
SELECT unnest(%(ids)s::uuid[]), %(batch_seq)s
ON CONFLICT (intent_id) DO NOTHING
RETURNING intent_id

