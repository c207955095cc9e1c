-- The built-in domain tables, created in the writer's schema only when the built-in kinds
-- write their own tables (no WRITER_TABLES): an application's tables belong to its own
-- migrations. Timestamps come from the intents, never from now().

CREATE TABLE lectures (
    id          bigint PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL
);
CREATE INDEX lectures_tenant_idx ON lectures (tenant_id);

CREATE TABLE students (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    phone         text NOT NULL,
    name          text NOT NULL,
    parent_phone  text,
    school        text,
    grade         smallint CHECK (grade BETWEEN 1 AND 12),
    birth_date    date,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    CONSTRAINT students_tenant_phone_key UNIQUE (tenant_id, phone)
);

CREATE TABLE enrollments (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    lecture_id  bigint NOT NULL REFERENCES lectures (id),
    student_id  bigint NOT NULL REFERENCES students (id),
    import_id   uuid,
    enrolled_at timestamptz NOT NULL,
    CONSTRAINT enrollments_lecture_student_key UNIQUE (lecture_id, student_id)
);
CREATE INDEX enrollments_student_idx ON enrollments (student_id);

CREATE TABLE videos (
    id           uuid PRIMARY KEY,
    tenant_id    bigint NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'processing', 'ready', 'failed')),
    attempt      integer NOT NULL,
    status_rank  smallint NOT NULL,
    source_key   text,
    hls_key      text,
    duration_s   double precision,
    renditions   jsonb,
    error        text,
    queued_at    timestamptz,
    started_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL
);
CREATE INDEX videos_tenant_idx ON videos (tenant_id);
