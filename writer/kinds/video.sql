-- The video kind's statements (writer/kinds/video.py), one block per `-- name:` line.
-- Timestamps come from the intents; none of these statements calls now().

-- name: upsert_videos
-- A row changes only for a strictly higher (attempt, status_rank): state never moves back.
-- Returns how many rows changed and the videos that exist under another tenant (then nothing
-- is written).
WITH new AS (
    SELECT * FROM unnest(
        %(id)s::uuid[], %(tenant_id)s::bigint[], %(status)s::text[], %(attempt)s::integer[],
        %(status_rank)s::smallint[], %(source_key)s::text[], %(hls_key)s::text[],
        %(duration_s)s::double precision[], %(renditions)s::jsonb[], %(error)s::text[],
        %(queued_at)s::timestamptz[], %(started_at)s::timestamptz[],
        %(finished_at)s::timestamptz[], %(updated_at)s::timestamptz[]
    ) AS n (id, tenant_id, status, attempt, status_rank, source_key, hls_key, duration_s,
            renditions, error, queued_at, started_at, finished_at, updated_at)
), foreign_tenant AS (
    SELECT n.id FROM new AS n JOIN videos AS v ON v.id = n.id WHERE v.tenant_id <> n.tenant_id
), changed AS (
    INSERT INTO videos AS v (id, tenant_id, status, attempt, status_rank, source_key, hls_key,
                             duration_s, renditions, error, queued_at, started_at, finished_at,
                             updated_at)
    SELECT * FROM new WHERE NOT EXISTS (SELECT FROM foreign_tenant)
    ON CONFLICT (id) DO UPDATE SET
        status = EXCLUDED.status,
        attempt = EXCLUDED.attempt,
        status_rank = EXCLUDED.status_rank,
        source_key = coalesce(EXCLUDED.source_key, v.source_key),
        queued_at = coalesce(EXCLUDED.queued_at, v.queued_at),
        started_at = CASE WHEN EXCLUDED.started_at IS NOT NULL THEN EXCLUDED.started_at
                          WHEN EXCLUDED.attempt = v.attempt
                               AND EXCLUDED.status <> 'queued' THEN v.started_at END,
        hls_key = EXCLUDED.hls_key,
        duration_s = EXCLUDED.duration_s,
        renditions = EXCLUDED.renditions,
        error = EXCLUDED.error,
        finished_at = EXCLUDED.finished_at,
        updated_at = EXCLUDED.updated_at
    WHERE (EXCLUDED.attempt, EXCLUDED.status_rank) > (v.attempt, v.status_rank)
    RETURNING v.id
)
SELECT (SELECT count(*) FROM changed), ARRAY(SELECT id FROM foreign_tenant)
