-- Migrations of plug-in kinds (jobplatform.kinds.Kind.migrations), applied once each by kind.
CREATE TABLE writer_kind_migrations (
    kind        text NOT NULL,
    version     integer NOT NULL,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, version)
);
