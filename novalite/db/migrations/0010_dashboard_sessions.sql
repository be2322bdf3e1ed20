-- 0007: dashboard sessions in the database (issue #20), so a restart (an upgrade, a crash) does
-- not log every browser out. A row is found by the SHA-256 of the random id in the browser's
-- cookie (the id itself is never stored); it holds the user's Keystone token, as Horizon's
-- database session backend does, until the token expires. Idempotent.
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    id_hash text PRIMARY KEY,
    token text NOT NULL,
    user_id text NOT NULL,
    user_name text NOT NULL,
    project_id text NOT NULL,
    project_name text NOT NULL,
    roles text[] NOT NULL,
    projects jsonb NOT NULL,  -- [[id, name], ...] for the project switcher
    csrf text NOT NULL,
    admin_area boolean NOT NULL,
    flash text NOT NULL DEFAULT '',
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dashboard_sessions_expires ON dashboard_sessions (expires_at);
